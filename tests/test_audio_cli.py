"""Sound end to end from the command line: train on clips, sample WAVs and arrays, score them with
the spoken-digit classifier; bad input exits 2 with the value named."""
import json

import numpy as np
import pytest
from _cli import TINY, run_main

from undiffuse.io.audio import read_wav
from undiffuse.metrics import evaluate as ev
from undiffuse.metrics import speech_features as sf

from test_audio_data import SMALL_VOICES


@pytest.fixture(scope="module")
def small_speech():
    """Spoken digits from four voices, and a spoken-digit classifier trained on them in a few
    epochs with 8 channels (the real recipe's held-out accuracy is measured in benchmarks/audio.py)."""
    from undiffuse.data import speech
    mp = pytest.MonkeyPatch()
    mp.setattr(speech, "voices", lambda: list(SMALL_VOICES))
    for key, value in {"channels": 8, "features": 32, "epochs": 40, "lr": 5e-3}.items():
        mp.setitem(sf.HPARAMS, key, value)
    sf._MEMO.clear()
    yield
    sf._MEMO.clear()
    mp.undo()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-step class-conditional run on the notes per representation."""
    from _cli import main_code
    out = {}
    for rep, patch in (("wave", 8), ("mel", 2)):
        run = tmp_path_factory.mktemp("audio") / rep
        assert main_code(["train", "--data", "notes", "--conditioning", "class", "--max-steps", "2", "--out", str(run),
                          *TINY, "--representation", rep, "--set", f"model.patch_size={patch}"]) == 0
        out[rep] = run
    return out


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A 0.8 s note as a 16-bit WAV at 16 kHz (the runs are 8 kHz: it is resampled)."""
    import soundfile
    path = tmp_path_factory.mktemp("clip") / "note.wav"
    t = np.arange(12800) / 16000
    soundfile.write(str(path), 0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-2 * t), 16000, subtype="PCM_16")
    return path


@pytest.mark.parametrize("representation", ["wave", "mel"])
def test_train_and_sample_sound(runs, tmp_path, capsys, representation):
    run = runs[representation]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["representation"] == representation and cfg["model"]["dims"] == (1 if representation == "wave" else 2)
    assert (run / "samples").is_dir() and any((run / "samples").iterdir())  # the spectrogram grid of the run
    out = tmp_path / "wavs"
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--class", "A", "--num", "2", "--steps", "2",
                             "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["000000.wav", "000001.wav", "spectrograms.png"]
    x, rate, meta = read_wav(str(out / "000001.wav"))
    assert rate == 8000 and len(x) == 8192 and np.abs(x).max() <= 1
    assert meta["parameters"]["class"] == "A" and meta["parameters"]["seed"] == 1
    assert meta["parameters"]["representation"] == representation and meta["provenance"]["model_sha256"]
    npz = tmp_path / "s.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--class", "all", "--num", "12", "--steps", "2",
                             "--format", "npz", "--out", str(npz), "--no-progress"], capsys)
    assert code == 0, err
    with np.load(npz) as z:
        assert z["samples"].shape == (12, 1, 8192) and np.abs(z["samples"]).max() <= 1
        assert z["labels"].tolist() == list(range(12))
        assert json.loads(str(z["parameters"]))["sample_rate"] == 8000
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--format", "png", "--num", "1", "--out",
                             str(tmp_path / "p")], capsys)
    assert code == 2 and "--format png writes pictures" in err and "use --format wav or npz" in err


@pytest.fixture
def few_chords():
    """Chords of two qualities in two timbres (288 clips), so their captions embed in seconds."""
    from undiffuse.data import notes
    mp = pytest.MonkeyPatch()
    mp.setattr(notes, "QUALITIES", {k: notes.QUALITIES[k] for k in ("major", "minor")})
    mp.setattr(notes, "TIMBRES", ("sine", "bell"))
    notes._render_chords.cache_clear()
    yield
    mp.undo()
    notes._render_chords.cache_clear()


def test_text_to_sound_on_captioned_chords(tmp_path, capsys, few_chords):
    """Captions of the chords condition a run; a prompt's WAVs carry it in their comment."""
    run = tmp_path / "chords"
    code, _, err = run_main(["train", "--data", "chords", "--conditioning", "text", "--max-steps", "1", "--out",
                             str(run), *TINY, "--set", "model.patch_size=4", "--no-progress"], capsys)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["conditioning"]["kind"] == "text" and cfg["data"]["name"] == "chords"
    prompt = "A minor chord on a bell, struck"
    out = tmp_path / "bells"
    code, _, err = run_main(["sample", "--checkpoint", str(run), "--prompt", prompt, "--num", "2", "--steps", "2",
                             "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    x, rate, meta = read_wav(str(out / "000001.wav"))
    assert rate == 8000 and len(x) == 8192 and meta["parameters"]["prompt"] == prompt


@pytest.mark.parametrize("representation", ["wave", "mel"])
def test_inpaint_a_gap_keeps_the_rest_of_the_clip(runs, clip_file, tmp_path, capsys, representation):
    out = tmp_path / "filled"
    code, _, err = run_main(["inpaint", "--checkpoint", str(runs[representation]), "--audio", str(clip_file), "--gap",
                             "0.3:0.5", "--class", "A", "--num", "2", "--steps", "4", "--jump-count", "1", "--out",
                             str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["000000.wav", "000001.wav", "spectrograms.png"]
    from undiffuse.data.audio import read_audio, resample
    signal, rate = read_audio(str(clip_file))
    given = np.clip(resample(signal, rate, 8000), -1, 1)
    y, rate, meta = read_wav(str(out / "000000.wav"))
    assert rate == 8000 and meta["parameters"]["gap"] == "0.3:0.5" and meta["parameters"]["class"] == "A"
    given = np.pad(given, (0, 8192 - len(given)))  # the 0.8 s clip, padded with silence to the model's 1.024 s
    outside = np.r_[0:2400, 4000:8192]  # the gap is 0.3 s to 0.5 s at 8 kHz
    assert np.abs(y[outside] - given[outside]).max() <= 1 / 32768 + 1e-9  # kept exactly (16-bit rounding)
    assert np.abs(y[2480:3920] - given[2480:3920]).max() > 1e-3  # the gap (past the cross-fades) is new


def test_img2img_varies_a_clip_and_bad_sound_input_exits_2(runs, clip_file, tmp_path, capsys):
    run = str(runs["mel"])
    code, _, err = run_main(["img2img", "--checkpoint", run, "--audio", str(clip_file), "--strength", "0.5",
                             "--steps", "4", "--out", str(tmp_path / "v")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["000000.wav", "spectrograms.png"]
    import soundfile
    long = tmp_path / "long.wav"
    soundfile.write(str(long), np.zeros(12000), 8000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEfmt nonsense")
    cases = [(["--audio", str(clip_file), "--gap", "0.5:0.9"], "--gap '0.5:0.9' is outside the clip: need 0 <= START < END <= 0.800 s"),
             (["--audio", str(clip_file), "--gap", "half"], "--gap 'half': expected START:END in seconds"),
             (["--audio", str(clip_file)], "--gap START:END is required to inpaint sound"),
             (["--audio", str(long), "--gap", "0:0.1"], "is 1.500 s long; the model makes clips of 1.024 s"),
             (["--audio", str(broken), "--gap", "0:0.1"], "broken.wav: cannot decode audio"),
             (["--image", "digits", "--mask", "top"], "makes sound: give the clip with --audio")]
    for extra, message in cases:
        code, _, err = run_main(["inpaint", "--checkpoint", run, *extra, "--out", str(tmp_path / "x")], capsys)
        assert code == 2 and message in err, (extra, err)
    assert not (tmp_path / "x").exists()


def test_sound_defaults_to_the_mel_recipe(tmp_path, capsys):
    code, out, err = run_main(["train", "--data", "notes", "--max-steps", "1", "--dry-run", "--out", str(tmp_path)],
                              capsys)
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["preset"] == "audio-mel" and cfg["data"]["representation"] == "mel" and cfg["model"]["dims"] == 2
    code, out, _ = run_main(["train", "--data", "notes", "--representation", "wave", "--max-steps", "1", "--dry-run",
                             "--out", str(tmp_path)], capsys)
    cfg = json.loads(out)
    assert cfg["preset"] == "audio-wave" and cfg["model"]["dims"] == 1 and cfg["data"]["sample_rate"] == 8000


def test_bad_sound_options_exit_2(tmp_path, capsys):
    code, _, err = run_main(["train", "--data", "notes", "--sample-rate", "11025", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--sample-rate" in err and "11025" in err
    code, _, err = run_main(["train", "--data", "notes", "--representation", "stft", "--out", str(tmp_path / "r")],
                            capsys)
    assert code == 2 and "--representation" in err and "'stft'" in err
    code, _, err = run_main(["train", "--data", "notes", "--representation", "wave", "--preset", "digits-dit", "--out",
                             str(tmp_path / "r")], capsys)
    assert code == 2 and "waveforms need a U-Net (preset audio-wave)" in err


def test_classifier_scores_real_speech_above_broken_speech(small_speech):
    from undiffuse import data
    ds = data.load("spoken-digits")
    x, y = ds.get(slice(None)).numpy(), ds.labels.numpy()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    a, b = perm[: len(x) // 2], perm[len(x) // 2:]
    real = ev.evaluate(x[a], x[b], labels=y[a], k=3, kid_subsets=5, kid_subset_size=50)
    assert real["protocol"]["feature_space"] == "spoken-digits" and "spoken-digit classifier" in real["protocol"]["features"]
    noisy = np.clip(x[a] + 0.3 * rng.standard_normal(x[a].shape), -1, 1)
    bad = ev.evaluate(noisy, x[b], labels=y[a], k=3, kid_subsets=5, kid_subset_size=50)
    assert real["fd"] * 5 < bad["fd"]
    assert real["adherence"] > 0.9 and real["adherence"] > bad["adherence"]
    wrong = ev.evaluate(x[a], x[b], labels=(y[a] + 1) % 10, k=3, kid_subsets=5, kid_subset_size=50)
    assert wrong["adherence"] < 0.2
    assert real["is"] > 5 and sf.inception_score(np.tile([[0.0] * 9 + [1.0]], (20, 1))) == pytest.approx(1.0)
    quiet = sf.speech_features(x[:8] * 0.1)  # levels do not matter: every clip is read at the data's peak
    assert np.allclose(quiet, sf.speech_features(x[:8]), atol=1e-3)


def test_evaluate_command_reads_sound_samples(small_speech, tmp_path, capsys):
    from undiffuse import data
    ds = data.load("spoken-digits")
    idx = np.arange(0, len(ds), 3)
    npz = tmp_path / "s.npz"
    np.savez(npz, samples=ds.get(idx).numpy(), labels=ds.labels[idx].numpy(),
             parameters=np.array(json.dumps({"sample_rate": 8000})))
    code, out, err = run_main(["evaluate", str(npz), "--reference", "spoken-digits", "--json", "--k", "3",
                               "--kid-subsets", "5", "--kid-subset-size", "40"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["adherence"] > 0.9 and res["fd"] < 50 and res["is"] > 3
    np.savez(npz, samples=np.full((10, 1, 8192), 1.5), parameters=np.array("{}"))
    code, _, err = run_main(["evaluate", str(npz), "--reference", "spoken-digits"], capsys)
    assert code == 2 and "waveforms must be in [-1, 1]" in err


def test_server_answers_sound_runs_with_wavs(runs, tmp_path, capsys):
    """The HTTP server samples a sound run like `sample` does: a WAV (its bytes equal the CLI's
    samples), JSON with base64 WAVs, and clear errors for picture formats."""
    pytest.importorskip("uvicorn")
    import base64
    import shutil

    from test_serve import call

    from undiffuse.serve import create_app
    from undiffuse.serve.background import BackgroundServer
    folder = tmp_path / "models"
    shutil.copytree(runs["mel"], folder / "notes")
    with BackgroundServer(create_app(str(folder))) as srv:
        status, ctype, body = call(srv.url, "/v1/generate", {"model": "notes", "class": "A", "steps": 2, "seed": 3,
                                                             "format": "wav"})
        assert status == 200 and ctype == "audio/wav", body[:200]
        x, rate, meta = read_wav(body)
        assert rate == 8000 and len(x) == 8192 and meta["provenance"]["class"] == "A" and meta["provenance"]["seed"] == 3
        status, _, body = call(srv.url, "/v1/generate", {"model": "notes", "class": "A", "steps": 2, "seed": 3,
                                                         "count": 2})
        items = json.loads(body)["images"]
        assert status == 200 and len(items) == 2
        # the same sample in a batch of two: the same sound up to the network's float32 batch arithmetic
        # (which Griffin-Lim's iterations carry into the phases)
        assert np.corrcoef(read_wav(base64.b64decode(items[0]["wav"]))[0], x)[0, 1] > 0.99
        status, _, body = call(srv.url, "/v1/generate", {"model": "notes", "format": "png"})
        assert status == 400 and "makes sound, not images; use format 'wav' or 'json'" in body.decode()
    code, _, err = run_main(["sample", "--checkpoint", str(runs["mel"]), "--class", "A", "--num", "1", "--seed", "3",
                             "--steps", "2", "--out", str(tmp_path / "cli"), "--no-progress"], capsys)
    assert code == 0, err
    assert read_wav(str(tmp_path / "cli" / "000000.wav"))[0].tolist() == x.tolist()  # one sample, one batch: equal


def test_consistency_student_of_a_sound_run_samples_in_one_step(runs, tmp_path, capsys):
    """Few-step distillation is the same command on sound: the student trains on the teacher's
    own data (its representation and rate) and writes WAVs from one step."""
    out = tmp_path / "cm"
    code, _, err = run_main(["distill", "--method", "consistency", "--teacher", str(runs["mel"]), "--out", str(out),
                             "--max-steps", "2", "--steps", "6", "--no-levels", "--no-progress"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["representation"] == "mel" and cfg["sample"]["steps"] == 1
    code, _, err = run_main(["sample", "--checkpoint", str(out), "--class", "C", "--num", "2", "--out",
                             str(tmp_path / "one"), "--no-progress"], capsys)
    assert code == 0, err
    x, rate, meta = read_wav(str(tmp_path / "one" / "000000.wav"))
    assert len(x) == 8192 and meta["parameters"]["steps"] == 1 and meta["parameters"]["class"] == "C"
