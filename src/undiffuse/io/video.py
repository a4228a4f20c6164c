"""Video files: animated GIF (Pillow) and MP4 (PyAV, optional) with the generation parameters
inside, read back with them, and frame-strip pictures of clips.

**GIF** (:func:`gif_bytes`): one global palette for the whole clip, looping forever. When the
clip uses at most 256 colours (always for greyscale: at most 256 grey levels) the palette holds
exactly the colours used, so the clip reads back bit for bit (:func:`read_gif`). A colour clip
with more colours is quantised by Pillow (median cut to 256 colours over all its frames, no
dithering): that is the lossy case. Frame ``k`` starts at ``floor(100 k / fps + 1/2)``
centiseconds (GIF times frames in 1/100 s), so the clip's length is exact to 1/100 s and 8 fps
plays as 13 and 12 cs frames in turn. The metadata is the GIF's comment extension: the title
line (when given), a newline, then the metadata as one line of JSON. Frames are written one by
one (Pillow's ``GifImagePlugin.getheader`` / ``getdata``) because Pillow's animated-GIF writer
merges equal consecutive frames.

**MP4** (:func:`mp4_bytes`, needs ``pip install av``): H.264 (libx264, CRF 17, yuv420p; else
MPEG-4 part 2), lossy; the metadata JSON is the container's ``comment`` tag and the title its
``title`` tag. Odd frame sizes are padded by repeating the last row / column (yuv420p needs
even sizes).
"""
from __future__ import annotations

import io
import itertools
import json
import math
from fractions import Fraction
from importlib.util import find_spec

import numpy as np
from PIL import GifImagePlugin, Image

from undiffuse.io.images import grid

MP4_CODECS = ("libx264", "h264", "mpeg4")  # the first one PyAV's FFmpeg can encode is used
MP4_CRF = 17
INSTALL_AV = "pip install av (or pip install 'undiffuse[video]')"


def _check(frames_u8: np.ndarray, fps: float) -> np.ndarray:
    a = np.asarray(frames_u8)
    if a.ndim != 4 or a.shape[-1] not in (1, 3) or a.dtype != np.uint8 or a.shape[0] == 0:
        raise ValueError(f"a clip is (T, H, W, C) uint8 with C 1 or 3 and T >= 1; got {a.dtype} of shape {a.shape}")
    if not 0 < fps <= 100:
        raise ValueError(f"fps must lie in (0, 100] (GIF times frames in 1/100 s), got {fps!r}")
    return a


def _comment(metadata: dict | None, title: str | None) -> bytes:
    line = json.dumps(metadata if metadata is not None else {}, sort_keys=True, default=str)
    head = "" if title is None else " ".join(str(title).splitlines()) + "\n"
    return (head + line).encode("utf-8")


def _parse(comment) -> dict:
    if isinstance(comment, bytes):
        comment = comment.decode("utf-8", "replace")
    try:
        meta = json.loads((comment or "").rsplit("\n", 1)[-1] or "{}")
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _indexed(a: np.ndarray) -> tuple[np.ndarray, bytes]:
    """(T, H, W, C) uint8 -> palette indices (T, H, W) uint8 and the RGB palette: exact when the
    clip uses at most 256 colours, else Pillow's median cut over all frames."""
    rgb = a if a.shape[-1] == 3 else np.repeat(a, 3, axis=-1)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    if len(colours) <= 256:
        palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], 1).astype(np.uint8)
        return inverse.reshape(packed.shape).astype(np.uint8), palette.tobytes()
    t, h, w, _ = rgb.shape
    sheet = Image.fromarray(np.ascontiguousarray(rgb.reshape(t * h, w, 3)))
    q = sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return np.asarray(q, np.uint8).reshape(t, h, w), bytes(q.getpalette()[:768])


def frame_times(frames: int, fps: float) -> list[int]:
    """Each frame's duration in centiseconds: frame ``k`` starts at ``floor(100 k / fps + 1/2)``."""
    starts = [math.floor(100 * k / fps + 0.5) for k in range(frames + 1)]
    return [b - a for a, b in itertools.pairwise(starts)]


def gif_bytes(frames_u8: np.ndarray, fps: float, metadata: dict | None = None, title: str | None = None) -> bytes:
    """A clip ``(T, H, W, C)`` uint8 (C 1 or 3) as a looping animated GIF with ``metadata`` (a
    JSON-serialisable dict) and ``title`` in its comment; see the module docstring."""
    a = _check(frames_u8, fps)
    index, palette = _indexed(a)
    t, h, w = index.shape
    images = []
    for k in range(t):
        im = Image.frombytes("P", (w, h), np.ascontiguousarray(index[k]).tobytes())
        im.putpalette(palette)
        images.append(im)
    header, _ = GifImagePlugin.getheader(images[0], None, {"loop": 0, "comment": _comment(metadata, title),
                                                           "optimize": False})
    parts = list(header)
    for im, cs in zip(images, frame_times(t, fps)):
        parts.extend(GifImagePlugin.getdata(im, duration=10 * cs))
    parts.append(b";")  # trailer
    return b"".join(parts)


def read_gif(path_or_bytes) -> tuple[np.ndarray, float, dict]:
    """``(frames (T, H, W, C) uint8, fps, metadata)`` of a GIF: C is 1 when every frame is grey,
    else 3; fps is frames / total duration (exact to the GIF's 1/100 s); metadata the JSON of
    the comment's last line (empty when there is none or it is not JSON)."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    with Image.open(src, formats=["GIF"]) as img:
        comment = img.info.get("comment", b"")
        frames, total = [], 0
        for k in range(img.n_frames):
            img.seek(k)
            total += img.info.get("duration", 0) or 0
            frames.append(np.asarray(img.convert("RGB"), np.uint8))
    a = np.stack(frames)
    if (a == a[..., :1]).all():
        a = np.ascontiguousarray(a[..., :1])
    return a, (1000 * len(a) / total if total else 0.0), _parse(comment)


def mp4_available() -> bool:
    """Whether PyAV is installed (MP4 writing and reading need it)."""
    return find_spec("av") is not None


def _av():
    try:
        import av  # video extra (pip install av): MP4 encoding and decoding
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"MP4 needs PyAV: {INSTALL_AV}") from e
    return av


def mp4_codec() -> str:
    """The first of :data:`MP4_CODECS` PyAV's FFmpeg can encode."""
    av = _av()
    for name in MP4_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except ValueError:  # av.codec.codec.UnknownCodecError: not in this FFmpeg build
            continue
    raise RuntimeError(f"PyAV's FFmpeg encodes none of {', '.join(MP4_CODECS)}")


def mp4_bytes(frames_u8: np.ndarray, fps: float, metadata: dict | None = None, title: str | None = None) -> bytes:
    """A clip ``(T, H, W, C)`` uint8 as MP4 bytes (PyAV; H.264 when the wheel has it), with
    ``metadata`` as JSON in the ``comment`` tag and ``title`` in the ``title`` tag."""
    av = _av()
    a = _check(frames_u8, fps)
    rgb = a if a.shape[-1] == 3 else np.repeat(a, 3, axis=-1)
    h, w = rgb.shape[1:3]
    rgb = np.pad(rgb, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec = mp4_codec()
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        container.metadata["comment"] = json.dumps(metadata if metadata is not None else {}, sort_keys=True,
                                                   default=str)
        if title is not None:
            container.metadata["title"] = " ".join(str(title).splitlines())
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = rgb.shape[2], rgb.shape[1], "yuv420p"
        if codec != "mpeg4":
            stream.options = {"crf": str(MP4_CRF)}
        for frame in rgb:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def read_mp4(path_or_bytes) -> tuple[np.ndarray, float, dict]:
    """``(frames (T, H, W, 3) uint8, fps, metadata)`` of an MP4 (PyAV); metadata the JSON of the
    ``comment`` tag (empty when there is none or it is not JSON)."""
    av = _av()
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    with av.open(src) as container:
        comment = container.metadata.get("comment", "")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps, _parse(comment)


def strip(videos_u8: np.ndarray, max_frames: int = 16, pad: int = 1) -> np.ndarray:
    """Clips ``(N, T, H, W, C)`` uint8 as one picture ``(H', W', C)`` on white: one row per clip,
    its frames left to right with ``pad`` px between. A clip longer than ``max_frames`` shows
    ``max_frames`` frames evenly spaced from its first to its last."""
    v = np.asarray(videos_u8)
    if v.ndim != 5:
        raise ValueError(f"strip takes clips (N, T, H, W, C), got shape {v.shape}")
    t, h, w, c = v.shape[1:]
    keep = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    return grid(v[:, keep].reshape(-1, h, w, c), nrow=len(keep), pad=pad)
