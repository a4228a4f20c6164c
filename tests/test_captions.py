"""Captions for image folders (metadata.jsonl and sidecar .txt), per-item caption tables,
flips on text runs, and the `sample --prompts` file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from _cli import TINY, main_code, run_main
from undiffuse import config, data, nets
from undiffuse.steering.conditioning import TextTable

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _images(root, n=6, ext="png"):
    root.mkdir(exist_ok=True)
    names = []
    for i in range(n):
        colour = list(COLOURS)[i % 3]
        a = np.full((8, 8, 3), 255, np.uint8)
        a[2:6, 2:6] = COLOURS[colour]
        Image.fromarray(a).save(root / f"img{i}.{ext}")
        names.append((f"img{i}.{ext}", f"a {colour} square"))
    return names


def _jsonl(root, rows):
    (root / "metadata.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_metadata_jsonl_gives_each_image_its_captions(tmp_path):
    names = _images(tmp_path / "d")
    _jsonl(tmp_path / "d", [{"file_name": f, "text": t} for f, t in names[:5]] +
           [{"file_name": names[5][0], "text": [names[5][1], "a square, blue"]}])
    ds = data.load(str(tmp_path / "d"))
    assert ds.captions[:5] == [[t] for _, t in names[:5]]
    assert ds.captions[5] == [names[5][1], "a square, blue"]
    assert "6 captioned" in ds.source


def test_sidecar_txt_files_one_wording_per_line(tmp_path):
    names = _images(tmp_path / "d", n=3)
    for f, t in names:
        (tmp_path / "d" / f.replace(".png", ".txt")).write_text(f"{t}\n\n{t} on white\n")
    ds = data.load(str(tmp_path / "d"))  # the .txt files are not reported as unsupported files
    assert ds.captions == [[t, f"{t} on white"] for _, t in names]


def test_missing_captions_are_named_in_a_warning_or_an_error_with_strict(tmp_path):
    names = _images(tmp_path / "d", n=4)
    _jsonl(tmp_path / "d", [{"file_name": f, "text": t} for f, t in names[:3]])
    with pytest.warns(data.DataWarning, match="1 image.*no caption.*img3.png"):
        ds = data.load(str(tmp_path / "d"))
    assert ds.captions[3] == []
    with pytest.raises(data.DataError, match="img3.png"):
        data.load(str(tmp_path / "d"), strict=True)


@pytest.mark.parametrize("rows,message", [
    (['{"file_name": "img0.png", "text": "a"}', "{not json"], "line 2: not valid JSON"),
    (['{"file_name": "img0.png"}'], "line 1: expected an object with 'file_name'"),
    (['{"file_name": "img0.png", "text": ""}'], "line 1: 'text' is empty"),
    (['{"file_name": "img0.png", "text": 3}'], "line 1: 'text' must be a caption string"),
    (['{"file_name": "img0.png", "text": "a"}', "", '{"file_name": "img0.png", "text": "b"}'],
     "line 3: 'img0.png' was already captioned on line 1"),
])
def test_malformed_and_duplicate_metadata_lines_are_named(tmp_path, rows, message):
    _images(tmp_path / "d", n=2)
    _jsonl(tmp_path / "d", rows)
    with pytest.raises(data.DataError, match=message):
        data.load(str(tmp_path / "d"))


def test_entry_for_a_missing_image_and_two_caption_sources(tmp_path):
    names = _images(tmp_path / "d", n=2)
    _jsonl(tmp_path / "d", [{"file_name": f, "text": t} for f, t in names] + [{"file_name": "gone.png", "text": "x"}])
    with pytest.warns(data.DataWarning, match="line 3: 'gone.png' is not an image"):
        data.load(str(tmp_path / "d"))
    (tmp_path / "d" / "img0.txt").write_text("another caption\n")
    with pytest.raises(data.DataError, match="captioned twice"):
        data.load(str(tmp_path / "d"))


def test_text_conditioning_needs_captions_or_labels(tmp_path):
    _images(tmp_path / "d")
    ds = data.load(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="needs captions or labels.*metadata.jsonl"):
        config.resolve("small", ds, {"conditioning.kind": "text"})


def test_per_item_table_picks_each_items_own_wordings():
    table = TextTable([["a", "b"], [], ["c"]], max_tokens=4, per_item=True)
    assert table.captions == ["a", "b", "c", ""]
    rows = torch.tensor([0, 0, 1, 2])
    picked = table.pick(rows, torch.tensor([0.1, 0.9, 0.5, 0.99]))
    assert [table.captions[i] for i in picked] == ["a", "b", "", "c"]
    assert [table.captions[i] for i in table.first(torch.tensor([1, 2, 0]))] == ["", "c", "a"]


def test_text_runs_do_not_flip_unless_asked(tmp_path):
    names = _images(tmp_path / "d")
    _jsonl(tmp_path / "d", [{"file_name": f, "text": t} for f, t in names])
    ds = data.load(str(tmp_path / "d"))
    for preset in config.preset_names():
        if config.PRESETS[preset]["model"]["kind"] not in ("mlp",) + nets.VIDEO_KINDS:  # (vectors, videos)
            assert config.resolve(preset, ds, {"conditioning.kind": "text"}).data.hflip is False
    assert config.resolve("small", ds, {"conditioning.kind": "text", "data.hflip": True}).data.hflip is True


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    names = _images(root / "d", n=12)
    _jsonl(root / "d", [{"file_name": f, "text": t} for f, t in names])
    out = root / "run"
    code = main_code(["train", "--data", str(root / "d"), "--conditioning", "text", "--set", "train.max_steps=2",
                  "--set", "train.time_budget=null", "--out", str(out), *TINY])
    assert code == 0
    return root


def test_sample_prompts_file_gives_one_sample_per_line_and_the_npz_keeps_them(text_run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red square\na blue square\na green square\n\n")
    out = tmp_path / "s.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(text_run / "run"), "--prompts", str(prompts),
                             "--format", "npz", "--out", str(out), "--steps", "2", "--no-progress"], capsys)
    assert code == 0, err
    with np.load(out) as f:
        assert f["samples"].shape == (3, 3, 8, 8)
        assert f["prompts"].tolist() == ["a red square", "a blue square", "a green square"]
    one = tmp_path / "one.npz"
    code, _, err = run_main(["sample", "--checkpoint", str(text_run / "run"), "--prompt", "a red square", "--num",
                             "2", "--format", "npz", "--out", str(one), "--steps", "2", "--no-progress"], capsys)
    with np.load(one) as f:
        assert code == 0 and f["prompts"].tolist() == ["a red square"] * 2


@pytest.mark.parametrize("content,extra,message", [
    ("", [], "has no prompts"),
    ("\n\n", [], "has no prompts"),
    ("a red square\n\na blue square\n", [], "line 2 is empty"),
    ("a red square\n", ["--num", "3"], "--num 3 and --prompts"),
    ("a red square\n", ["--prompt", "x"], "not both"),
])
def test_bad_prompt_files_are_usage_errors(text_run, tmp_path, capsys, content, extra, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text(content)
    code, _, err = run_main(["sample", "--checkpoint", str(text_run / "run"), "--prompts", str(prompts),
                             "--out", str(tmp_path / "s"), *extra], capsys)
    assert code == 2 and message in err and not (tmp_path / "s").exists()


def test_empty_prompt_is_a_usage_error(text_run, tmp_path, capsys):
    code, _, err = run_main(["sample", "--checkpoint", str(text_run / "run"), "--prompt", "  ",
                             "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "--prompt is empty" in err


def test_text_run_records_example_prompts_for_the_web_page(text_run):
    from undiffuse.inference import generate as gen
    run = gen.load_run(str(text_run / "run"))
    assert run.example_prompts and set(run.example_prompts) <= {f"a {c} square" for c in COLOURS}
