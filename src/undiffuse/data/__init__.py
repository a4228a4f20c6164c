"""Datasets for training diffusion models, all offline (nothing is ever downloaded).

``load(spec)`` returns a :class:`Dataset`. ``spec`` is either a built-in name (see ``names()``)
or a path to a folder of images, a ``.npy`` file or a ``.npz`` file.

Conventions
-----------
* Images are stored compactly (uint8 0..255, or the exact 0..16 digits values as float32, or
  float32 0..1 for float arrays) with shape ``(N, C, H, W)``; ``Dataset.get`` converts one batch
  to float32 in model space ``[-1, 1]``. ``Dataset.to_unit`` maps model space back to ``[0, 1]``.
* Vectors are stored as float32 ``(N, D)`` and returned as stored. The built-in 2-D toys are
  centred (mean 0) and divided by the overall std of all their coordinates (one scalar, so the
  shape is not distorted): their overall std is exactly 1. User vectors are used as given.
* Image folders: searched recursively (hidden files and folders skipped), paths sorted. Each
  image is centre-cropped to the target aspect ratio and resized (bicubic) to ``image_size``
  (an int means square; ``None`` means the first readable image's size). Transparency is
  composited on white. 16-bit greyscale is scaled to 8 bits. ``channels=None`` gives 1 channel
  when every image is greyscale (modes 1/L/LA/I/I;16/F), else 3 (RGB). If every image lies in
  an immediate sub-folder of the root, the sorted sub-folder names are the classes.
* Bad files (zero bytes, undecodable or truncated, unsupported extension, larger than
  ``MAX_PIXELS``) are skipped with a :class:`DataWarning` naming the file and the reason;
  with ``strict=True`` the first one raises :class:`DataError` instead. Unsupported extensions
  are reported while scanning, before any image is decoded. Only PNG/JPEG/WebP decoders are used.
* ``.npy``/``.npz`` (always ``allow_pickle=False``): ``(N, D)`` is vectors; ``(N, H, W)`` is
  1-channel images; 4-D is ``(N, C, H, W)`` unless the last dim is in {1, 3, 4} and the second is
  not, then ``(N, H, W, C)``. Integer images must lie in 0..255 (stored uint8); float images in
  [0, 1], or [-1, 1] when any value is negative. ``.npz`` data comes from the first of
  ``x/images/samples/data`` (else the only non-label array), labels from ``y``/``labels``.
* Captions (text-to-image): ``Dataset.captions`` holds each item's wordings. Image folders
  read them from ``metadata.jsonl`` or sidecar ``NAME.txt`` files (``data.captions``);
  ``emoji`` has them from the emoji names (``data.emoji``: ``emoji`` is the training split,
  ``emoji:heldout`` the held-out emoji, ``emoji:all`` both).
* Sound (``kind == "audio"``, ``data.audio``): ``spoken-digits`` (``data.speech``), ``notes``
  and ``chords`` (``data.notes``, captioned, the suffix choosing the labels) and folders of .wav/.flac/.ogg files, as waveforms ``(1, T)`` or log-mel
  spectrograms ``(1, n_mels, frames)``.
* Video (``kind == "video"``, ``data.video``): clips ``(T, C, H, W)`` stored uint8 and scaled
  like images. ``moving-digits`` (``:heldout`` for clips of held-out digit images; a
  :class:`~undiffuse.data.video.VideoDataset` with the digits and their trajectories), folders
  of .gif/.mp4/.webm videos and ``.npy``/``.npz`` files of 5-D ``(N, T, C, H, W)`` arrays;
  ``frames`` clips each to its first frames.
"""
from __future__ import annotations

import os

from undiffuse.data.arrays import _array_file
from undiffuse.data.base import SUPPORTED, DataError, Dataset, DataWarning, _parse_size  # noqa: F401 (public)
from undiffuse.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, _digits, _folder, _mnist5k  # noqa: F401 (public)
from undiffuse.data.audio import audio_folder, is_audio_folder
from undiffuse.data.emoji import load_emoji
from undiffuse.data.notes import load_chords, load_notes
from undiffuse.data.speech import load_spoken_digits
from undiffuse.data.toys import TOYS, _toy
from undiffuse.data.video import VideoDataset  # noqa: F401 (public)
from undiffuse.data.video import array_ndim, is_video_folder, load_moving_digits, video_array, video_folder


def names() -> list[str]:
    """The built-in dataset names."""
    return ["digits", "mnist5k", "emoji", "spoken-digits", "notes", "chords", "moving-digits", *TOYS]


def load(spec: str, *, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
         strict: bool = False, num_points: int = 20000, seed: int = 0, sample_rate: int = 8000,
         representation: str = "wave", frames: int = 16) -> Dataset:
    """Load a built-in dataset by name, or a folder of images, sound files or videos / ``.npy`` /
    ``.npz`` file by path.

    ``image_size`` and ``channels`` apply to image and video data (ignored for vectors);
    ``num_points`` and ``seed`` apply to the 2-D toys only; ``sample_rate`` and ``representation``
    (``wave`` or ``mel``) to sound (``data.audio``); ``frames`` (4..32) to video (``data.video``,
    ignored for other data); ``strict`` turns skipped bad files into errors.
    """
    size = _parse_size(image_size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    spec = str(spec)
    if spec == "digits":
        return _digits(size, channels)
    if spec == "mnist5k":
        return _mnist5k(size, channels)
    if spec == "emoji" or spec.startswith("emoji:"):
        return load_emoji(spec, size, channels)
    if spec == "spoken-digits" or spec.startswith("spoken-digits:"):
        return load_spoken_digits(spec, sample_rate, representation)
    if spec == "notes" or spec.startswith("notes:"):
        return load_notes(spec, sample_rate, representation)
    if spec == "chords" or spec.startswith("chords:"):
        return load_chords(spec, sample_rate, representation)
    if spec == "moving-digits" or spec.startswith("moving-digits:"):
        return load_moving_digits(spec, size, channels, frames)
    if spec in TOYS:
        return _toy(spec, num_points, seed)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if is_audio_folder(path):
            return audio_folder(spec, path, sample_rate, representation, strict)
        if is_video_folder(path):
            return video_folder(spec, path, size, channels, frames, strict)
        return _folder(spec, path, size, channels, strict)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in (".npy", ".npz"):
            if array_ndim(path, ext) == 5:
                return video_array(spec, path, ext, size, channels, frames)
            return _array_file(spec, path, ext, size, channels)
        raise DataError(f"{spec}: unsupported file type {ext or '(none)'!r}; expected {SUPPORTED}")
    raise DataError(f"unknown dataset {spec!r}: not a built-in name ({', '.join(names())}) and no such "
                    f"file or folder; supported paths: {SUPPORTED}")


