"""Two experts by noise level in one command (``train --experts``, the default for class-
conditional spoken digits): the high-noise expert trains into RUN/expert-high, the low-noise one
into RUN, and every command that samples RUN uses the pair; bad combinations exit 2."""
import json
import shutil

import numpy as np
import pytest
from _cli import TINY, run_main

from undiffuse.io.audio import read_wav
from undiffuse.training import expert_route as er

from test_audio_cli import small_speech  # noqa: F401  (a fixture: a small spoken-digit classifier)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A pair trained on the notes for 4 steps in all (2 + 2), and its printed result."""
    from _cli import main_code
    run = tmp_path_factory.mktemp("experts") / "pair"
    assert main_code(["train", "--data", "notes", "--conditioning", "class", "--experts", "--max-steps", "4",
                      "--out", str(run), *TINY]) == 0
    return run


def _npz(run, tmp_path, capsys, name, *extra):
    out = tmp_path / f"{name}.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--class", "A", "--num", "2", "--steps", "3",
                             "--format", "npz", "--out", str(out), "--no-progress", *extra], capsys)
    assert code == 0, err
    with np.load(out) as z:
        return z["samples"], json.loads(str(z["parameters"]))


def test_one_command_trains_both_experts_and_names_the_pair(pair):
    high = json.loads((pair / er.HIGH / "config.json").read_text())
    low = json.loads((pair / "config.json").read_text())
    assert high["model"]["dims"] == 1 and high["model"]["rows"] == 64 and high["diffusion"]["p_mean"] == 0.4
    assert low["model"]["dims"] == 2 and low["diffusion"]["p_mean"] == -1.6
    assert high["train"]["max_steps"] == 2 and low["train"]["max_steps"] == 2  # 4 in all, split in halves
    assert low["sample"]["expert"] == er.HIGH and low["sample"]["expert_above"] == er.ABOVE
    assert low["sample"]["guidance"] == er.GUIDANCE and high["sample"]["expert"] is None
    assert er.finished(er.high_state(str(pair)))
    assert er.rest_of_budget(900.0, None, {"elapsed": 450.5, "step": 10}) == (449.5, None)
    assert er.rest_of_budget(None, 9, {"elapsed": 3.0, "step": 5}) == (None, 4) and er.high_budget(None, 9) == (None, 4)


def test_sampling_the_run_uses_its_pair(pair, tmp_path, capsys):
    """The pair by default equals naming the expert by hand with the recorded guidance; 'none' is
    the low expert alone; a copy of the run folder samples alike (the expert is inside it); the
    WAVs record the expert, its checksum and the hand-off level."""
    both, params = _npz(pair, tmp_path, capsys, "both")
    assert params["guidance"] == er.GUIDANCE and params["expert_above"] == er.ABOVE and len(params["expert_sha256"]) == 64
    named, _ = _npz(pair, tmp_path, capsys, "named", "--expert", str(pair / er.HIGH), "--guidance", str(er.GUIDANCE))
    alone, params = _npz(pair, tmp_path, capsys, "alone", "--expert", "none")
    assert np.array_equal(both, named) and "expert" not in params and np.abs(both - alone).max() > 1e-3
    shutil.copytree(pair, tmp_path / "moved")
    moved, params = _npz(tmp_path / "moved", tmp_path, capsys, "moved")
    assert np.array_equal(both, moved) and params["expert"].startswith(str(tmp_path / "moved"))
    later, params = _npz(pair, tmp_path, capsys, "later", "--expert-above", "5")  # sigma 2.5 moves to the low one
    assert params["expert_above"] == 5 and not np.array_equal(later, both)
    code, _, err = run_main(["sample", "--checkpoint", str(pair), "--class", "A", "--num", "1", "--steps", "2",
                             "--out", str(tmp_path / "wav"), "--no-progress"], capsys)
    assert code == 0, err
    meta = read_wav(str(tmp_path / "wav" / "000000.wav"))[2]
    assert meta["provenance"]["expert_sha256"] == params["expert_sha256"] and meta["provenance"]["guidance"] == er.GUIDANCE


def test_server_samples_the_pair(pair, tmp_path, capsys):
    pytest.importorskip("uvicorn")
    from test_serve import call

    from undiffuse.serve import create_app
    from undiffuse.serve.background import BackgroundServer
    shutil.copytree(pair, tmp_path / "models" / "pair")
    with BackgroundServer(create_app(str(tmp_path / "models"))) as srv:
        status, _, body = call(srv.url, "/v1/models")
        listed = {m["name"]: m for m in json.loads(body)["models"]}
        assert listed["pair"]["default_guidance"] == er.GUIDANCE and listed["pair"]["expert_above"] == 1.0
        status, _, body = call(srv.url, "/v1/generate", {"model": "pair", "class": "A", "steps": 2, "format": "wav"})
        assert status == 200, body[:200]
    x, _, meta = read_wav(body)
    assert meta["provenance"]["guidance"] == er.GUIDANCE and len(meta["provenance"]["expert_sha256"]) == 64
    code, _, err = run_main(["sample", "--checkpoint", str(tmp_path / "models" / "pair"), "--class", "A", "--num",
                             "1", "--steps", "2", "--out", str(tmp_path / "cli"), "--no-progress"], capsys)
    assert code == 0, err
    assert read_wav(str(tmp_path / "cli" / "000000.wav"))[0].tolist() == x.tolist()


def test_a_pair_resumes_and_reuses_its_finished_expert(pair, tmp_path, capsys):
    run = tmp_path / "pair"
    shutil.copytree(pair, run)
    code, out, err = run_main(["train", "--resume", "auto", "--out", str(run), "--max-steps", "6"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["step"] == 4 and result["expert"]["step"] == 2 and "finished (2 steps); reusing it" in err
    code, _, err = run_main(["train", "--data", "notes", "--conditioning", "class", "--experts", "--max-steps", "4",
                             "--out", str(run)], capsys)
    assert code == 2 and "already holds checkpoints" in err and er.HIGH in err
    code, _, err = run_main(["train", "--resume", "auto", "--out", str(run), "--no-experts"], capsys)
    assert code == 2 and "is a pair of experts" in err
    # stopped between the stages: the low expert trains as first asked (class labels, the small network)
    fresh = tmp_path / "between"
    shutil.copytree(pair / er.HIGH, fresh / er.HIGH)
    shutil.copy(pair / er.PLAN, fresh / er.PLAN)
    code, out, err = run_main(["train", "--resume", "auto", "--out", str(fresh)], capsys)
    assert code == 0, err
    low = json.loads((fresh / "config.json").read_text())
    assert low["conditioning"]["kind"] == "class" and low["model"]["channels"] == 16 and low["train"]["max_steps"] == 2
    assert low["sample"]["expert"] == er.HIGH and json.loads(out.strip().splitlines()[-1])["step"] == 2


def test_experts_by_default_for_spoken_digits_only(tmp_path, capsys):
    from undiffuse.data import speech

    from test_audio_data import SMALL_VOICES
    mp = pytest.MonkeyPatch()
    mp.setattr(speech, "voices", lambda: list(SMALL_VOICES))
    try:
        for extra, expert in (([], er.HIGH), (["--no-experts", "--max-steps", "1"], None)):  # (no rate measured)
            code, out, err = run_main(["train", "--data", "spoken-digits", "--conditioning", "class", "--dry-run",
                                       "--out", str(tmp_path / "s"), *extra], capsys)
            assert code == 0, err
            cfg = json.loads(out)
            assert cfg["sample"]["expert"] == expert and cfg["preset"] == ("audio-mel-low" if expert else "audio-mel")
    finally:
        mp.undo()
    code, out, err = run_main(["train", "--data", "notes", "--conditioning", "class", "--max-steps", "1", "--dry-run"],
                              capsys)
    assert code == 0 and json.loads(out)["sample"]["expert"] is None


@pytest.mark.parametrize("args, message", [
    (["--data", "notes", "--experts", "--preset", "audio-mel"], "--preset cannot be combined with it"),
    (["--data", "notes", "--experts", "--representation", "wave"], "holds waveforms (--representation wave)"),
    (["--data", "digits", "--experts"], "--experts trains two experts on log-mel spectrograms"),
])
def test_bad_expert_options_exit_2(tmp_path, capsys, args, message):
    code, _, err = run_main(["train", *args, "--dry-run", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and message in err, err


def test_bad_sample_expert_options_exit_2(pair, tmp_path, capsys):
    single = tmp_path / "single"
    shutil.copytree(pair / er.HIGH, single)
    for run, extra, message in [
            (single, ["--expert-above", "1"], "--expert-above needs an expert"),
            (pair, ["--expert-above", "0"], "--expert-above must be a noise level > 0"),
            (pair, ["--expert", str(tmp_path / "nowhere")], "--expert: checkpoint"),
    ]:
        code, _, err = run_main(["sample", "--checkpoint", str(run), *extra, "--num", "1", "--out",
                                 str(tmp_path / "x")], capsys)
        assert code == 2 and message in err, (extra, err)
    broken = tmp_path / "broken"
    shutil.copytree(pair, broken)
    shutil.rmtree(broken / er.HIGH)
    code, _, err = run_main(["sample", "--checkpoint", str(broken), "--num", "1", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "high-noise expert" in err and "sample.expert" in err
    code, _, err = run_main(["train", "--data", "notes", "--representation", "wave", "--preset", "audio-mel-high",
                             "--max-steps", "1", "--dry-run", "--out", str(tmp_path / "w")], capsys)
    assert code == 2 and "model.rows reads the rows of 2-D samples" in err


@pytest.mark.usefixtures("small_speech")
def test_sweeps_sample_sound_runs_as_users_do(pair, tmp_path, capsys):
    """`sweep` on a sound run: waveforms scored in the spoken-digit features, spectrogram grids,
    every network of the pair counted, and the run's classes and guidance asked for."""
    ref = tmp_path / "ref.npz"  # 40 decaying tones stand in for a reference set
    t = np.arange(8192) / 8000
    np.savez(ref, samples=np.stack([0.5 * np.sin(2 * np.pi * f * t) * np.exp(-3 * t) for f in range(200, 1000, 20)])[:, None])
    code, out, err = run_main(["sweep", "--checkpoint", str(pair), "--samplers", "heun", "euler_ancestral", "--nfe",
                               "4", "--num", "12", "--reference", str(ref), "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("heun", 3), ("euler_ancestral", 4)]
    assert all(r["is"] >= 1 and "spoken-digit" in r["features"] for r in rows)
    assert (tmp_path / "s" / "grid_euler_ancestral_4.png").is_file()
    code, out, err = run_main(["sweep", "--checkpoint", str(pair), "--guidance", "1", "3", "--num", "12",
                               "--reference", str(ref), "--out", str(tmp_path / "g")], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "g" / "guidance.json").read_text())
    assert [r["guidance"] for r in rows] == [1, 3] and rows[0]["fd"] != rows[1]["fd"]
