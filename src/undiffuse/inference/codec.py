"""The first stage of latent diffusion at use: load a trained KL autoencoder folder, encode
images to scaled latents and decode them back, and a dataset of encoded images.

At use the posterior *mean* is the latent (deterministic), multiplied by the **scale factor**
``1 / std`` of the training set's latents (all elements together), so that the diffusion model
sees data of unit standard deviation (Rombach et al. 2022, section 4.3.2); ``decode`` divides
it out again. Training lives in ``undiffuse.training.autoencoder``.

An autoencoder folder holds::

    DIR/autoencoder.safetensors   the network's weights
    DIR/autoencoder.json          format tag, network config, scale factor, image and latent
                                  shapes, data, training settings, held-out reconstruction error,
                                  SHA-256 of the weights file

both written atomically (the JSON last, so a folder with a JSON is complete).
"""
from __future__ import annotations

import json
import os

import torch

from undiffuse.io import checkpoint as ckpt
from undiffuse.nets.autoencoder import Autoencoder, AutoencoderConfig
from undiffuse.utils.atomic import write_json
from undiffuse.utils.hashing import file_sha256

Tensor = torch.Tensor
FORMAT = "undiffuse-autoencoder"
WEIGHTS = "autoencoder.safetensors"
META = "autoencoder.json"


class AutoencoderError(ValueError):
    """A folder that is not a usable autoencoder; the message names the path and the reason."""


class LatentCodec:
    """A loaded autoencoder with its scale factor: ``encode`` images -> scaled latents,
    ``decode`` scaled latents -> images (model space). No gradients, evaluation mode."""

    def __init__(self, net: Autoencoder, meta: dict, path: str | None = None):
        self.net = net.eval().requires_grad_(False)
        self.meta = meta
        self.path = path
        self.scale_factor = float(meta["scale_factor"])
        self.image_shape = tuple(meta["image_shape"])
        self.latent_shape = tuple(meta["latent_shape"])
        self.sha256 = meta.get("sha256")

    @torch.no_grad()
    def encode(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Images (..., C, H, W) in [-1, 1] (e.g. clips (N, T, C, H, W): frame by frame) ->
        posterior means times the scale factor, (..., c, h, w)."""
        dev = next(self.net.parameters()).device
        flat = x.reshape(-1, *x.shape[-3:])
        out = [self.net.encode(flat[i:i + batch_size].to(dev, torch.float32))[0] for i in range(0, len(flat), batch_size)]
        out = torch.cat(out) * self.scale_factor
        return out.reshape(*x.shape[:-3], *out.shape[1:])

    @torch.no_grad()
    def decode(self, z: Tensor, batch_size: int = 256) -> Tensor:
        """Scaled latents (..., c, h, w) -> images in model space (about [-1, 1], not clamped)."""
        dev = next(self.net.parameters()).device
        flat = z.reshape(-1, *z.shape[-3:])
        out = [self.net.decode(flat[i:i + batch_size].to(dev, torch.float32) / self.scale_factor)
               for i in range(0, len(flat), batch_size)]
        out = torch.cat(out)
        return out.reshape(*z.shape[:-3], *out.shape[1:])


# ----------------------------------------------------------------------------- files


def save_autoencoder(out: str, net: Autoencoder, meta: dict) -> None:
    """Weights, then the JSON with their SHA-256 (written last, atomically)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, WEIGHTS)
    ckpt.save_tensors(path, net.state_dict(), metadata={"format": FORMAT})
    write_json(os.path.join(out, META), {**meta, "sha256": file_sha256(path)})


def load_autoencoder(path: str, device: str = "cpu", *, expect_sha256: str | None = None) -> LatentCodec:
    """Load an autoencoder folder written by :func:`train_autoencoder`. Raises
    ``AutoencoderError`` for a missing folder, a folder that is not an autoencoder, weights
    whose checksum differs from the one recorded (or from ``expect_sha256``)."""
    if not os.path.isdir(path):
        raise AutoencoderError(f"autoencoder {path!r} does not exist (or is not a folder); train one with "
                               f"`undiffuse train-autoencoder --data NAME --out DIR`")
    meta_path, weights = os.path.join(path, META), os.path.join(path, WEIGHTS)
    if not (os.path.isfile(meta_path) and os.path.isfile(weights)):
        raise AutoencoderError(f"{path!r} is not an autoencoder folder: it needs {META} and {WEIGHTS} "
                               f"(made by `undiffuse train-autoencoder`)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AutoencoderError(f"{meta_path} is not readable JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AutoencoderError(f"{meta_path} is not an autoencoder description (format tag {FORMAT!r} missing)")
    digest = file_sha256(weights)
    for want, what in ((meta.get("sha256"), f"the checksum recorded in {META}"),
                       (expect_sha256, "the checksum recorded by the latent run")):
        if want is not None and want != digest:
            raise AutoencoderError(f"{weights} has changed: its SHA-256 is {digest[:16]}..., {what} is "
                                   f"{want[:16]}...; use the autoencoder the run was trained with")
    try:
        net = Autoencoder(AutoencoderConfig(**meta["config"]))
        net.load_state_dict(ckpt.load_tensors(weights, device))
    except (KeyError, TypeError, RuntimeError, ckpt.CheckpointError) as e:
        raise AutoencoderError(f"{path!r}: cannot build the autoencoder from its files: {e}") from None
    return LatentCodec(net.to(device), meta, os.path.abspath(path))


# ----------------------------------------------------------------------------- latent data


class LatentDataset:
    """The images of ``dataset`` encoded once by ``codec``; to the trainer it looks like an image
    ``Dataset`` of shape ``codec.latent_shape`` (``get`` returns the scaled latents). ``pixels``
    is the image dataset, against which evaluations score decoded samples; ``to_unit`` decodes.
    A video dataset is encoded frame by frame: clips of shape (T, *latent_shape), kind video."""

    kind = "image"

    def __init__(self, dataset, codec: LatentCodec):
        video = dataset.kind == "video"
        frame = tuple(dataset.shape[1:] if video else dataset.shape)
        if frame != codec.image_shape:
            raise ValueError(f"the autoencoder {codec.path or ''} was trained on images of shape {codec.image_shape} "
                             f"({codec.meta.get('data', {}).get('name')}), but the data {dataset.name!r} has images "
                             f"of shape {tuple(dataset.shape)}; its latents would not match: train an autoencoder "
                             f"on this data")
        self.pixels, self.codec = dataset, codec
        self.name, self.labels, self.class_names = dataset.name, dataset.labels, list(dataset.class_names)
        self.captions, self.info = getattr(dataset, "captions", None), getattr(dataset, "info", {})
        self.kind = dataset.kind if video else "image"
        self.shape = (dataset.shape[0], *codec.latent_shape) if video else codec.latent_shape
        self.source = f"{dataset.source}; encoded by the autoencoder {codec.path} (scale {codec.scale_factor:.4g})"
        chunk = 512  # items encoded at a time (a clip is many images)
        self.storage = torch.cat([codec.encode(dataset.get(torch.arange(i, min(i + chunk, len(dataset)))))
                                  for i in range(0, len(dataset), chunk)]).contiguous()  # (N, *shape)
        if not torch.isfinite(self.storage).all():
            raise ValueError(f"the autoencoder {codec.path} gives non-finite latents for {dataset.name!r}")

    def __len__(self) -> int:
        return int(self.storage.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, index) -> Tensor:
        return self.storage[_as_index(index)]

    def flipped(self, index) -> Tensor:
        """The latents of the horizontally flipped images (``data.hflip``: flipping a latent is
        not encoding the flipped image). Encoded once, on first use."""
        if getattr(self, "_flipped", None) is None:
            self._flipped = self.codec.encode(self.pixels.get(torch.arange(len(self))).flip(-1)).contiguous()
        return self._flipped[_as_index(index)]

    def labels_of(self, index):
        return None if self.labels is None else self.labels[_as_index(index)]

    def to_unit(self, z: Tensor) -> Tensor:
        """Scaled latents -> decoded images in [0, 1] (clamped)."""
        return ((self.codec.decode(z).cpu() + 1) / 2).clamp(0, 1)


def _as_index(index):
    return index if isinstance(index, (Tensor, int, slice)) else torch.as_tensor(index, dtype=torch.long)
