"""Classifier guidance (Dhariwal & Nichol 2021): a noise-aware classifier ``p(y | x, sigma)``
trained on noisy data in the rescaled space ``x = x0 + sigma * eps``, whose gradient steers an
unconditional denoiser.

The maths
---------
Tweedie's formula in the rescaled space says ``D(x, sigma) = x + sigma^2 grad_x log p(x; sigma)``
for the ideal denoiser of the noisy marginal ``p(x; sigma)``. By Bayes,
``log p(x | y; sigma) = log p(x; sigma) + log p(y | x, sigma) - log p(y)``, so the ideal
*class-conditional* denoiser is

    D(x, sigma | y) = D(x, sigma) + sigma^2 grad_x log p(y | x, sigma),

and classifier guidance at scale ``w`` uses ``D + w sigma^2 grad_x log p(y | x, sigma)``
(Dhariwal & Nichol 2021, Algorithm 1 and section 4.2, written for a denoiser instead of
an epsilon-predictor). ``w = 1`` is exact conditioning when the classifier is exact; the
tests check that against analytic Gaussian mixtures. The wrapper itself lives in
``guidance.ClassifierGuidance``; ``classifier_guided`` here only connects a trained
classifier to it.

Input scaling: the classifier network sees what an EDM-preconditioned denoiser sees
(Karras et al. 2022, Table 1): ``c_in(sigma) x`` with ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``
and the noise label ``log(sigma) / 4`` (``precond.coefficients("edm", ...)``), so inputs
have roughly unit variance at every noise level. ``sigma_data`` is stored with the weights.
Noise levels are clamped to the training range ``[sigma_min, sigma_max]``; in particular
``sigma = 0`` (where guidance adds ``0 * gradient`` anyway) is evaluated at ``sigma_min``.

The trained folder (``model.safetensors`` + ``classifier.json``) is written into a temporary
folder and renamed into place; ``load_classifier`` reads it back (JSON and safetensors only).
Training lives in ``undiffuse.training.classifier``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import fields
from typing import Callable

import torch
from safetensors.torch import save_file

from undiffuse.core.precond import _per_sample_sigma, coefficients
from undiffuse.io import checkpoint as ckpt
from undiffuse.io.checkpoint import CheckpointError
from undiffuse.nets.classifier import ClassifierConfig, NoiseClassifier
from undiffuse.steering.guidance import classifier_guidance

Tensor = torch.Tensor
FORMAT = "undiffuse-classifier"
VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "classifier.json"

# ----------------------------------------------------------------------------- the guide


class ClassifierGuide:
    """A trained ``NoiseClassifier`` seen the way guidance needs it: ``log p(y | x, sigma)`` and
    its gradient for inputs in the rescaled space (any float dtype; the maths runs in float32
    or float64, whichever ``x`` is, and the network input is cast to the network's dtype).

    ``guide(x, sigma, labels)`` is ``guide.log_prob(...)``, so the guide itself is the
    ``log_prob`` callable ``guidance.classifier_guidance`` takes.
    """

    def __init__(self, net: NoiseClassifier, *, sigma_data: float, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, class_names: list[str] | None = None, meta: dict | None = None):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        k = net.config.num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(self.class_names) != k:
            raise ValueError(f"{len(self.class_names)} class names for a {k}-class classifier")
        self.meta = dict(meta or {})

    @property
    def num_classes(self) -> int:
        return self.net.config.num_classes

    def logits(self, x: Tensor, sigma) -> Tensor:
        """Class logits ``(B, num_classes)`` for noisy ``x`` at per-sample (or scalar) ``sigma``."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        sigma = _per_sample_sigma(sigma, x).to(dtype).clamp(self.sigma_min, self.sigma_max)
        _, _, c_in, c_noise = coefficients("edm", sigma, sigma_data=self.sigma_data)
        net_dtype = next(self.net.parameters()).dtype
        x_in = (c_in.reshape((-1,) + (1,) * (x.dim() - 1)) * x.to(dtype)).to(net_dtype)
        return self.net(x_in, c_noise.to(net_dtype)).to(dtype)

    def log_prob(self, x: Tensor, sigma, labels) -> Tensor:
        """``log p(y | x, sigma)`` per sample, shape ``(B,)``; ``labels`` is an int or ``(B,)``."""
        labels = _labels(labels, x.shape[0], self.num_classes, x.device)
        return torch.log_softmax(self.logits(x, sigma), dim=1).gather(1, labels[:, None])[:, 0]

    __call__ = log_prob

    def grad_log_prob(self, x: Tensor, sigma, labels) -> Tensor:
        """``grad_x log p(y | x, sigma)``, shaped like ``x`` (autograd, also under ``no_grad``)."""
        return log_prob_gradient(self.log_prob, x, sigma, labels)

    @torch.no_grad()
    def predict(self, x: Tensor, sigma) -> Tensor:
        """The most probable class per sample, ``(B,)`` int64."""
        return self.logits(x, sigma).argmax(1)

    def to(self, device) -> "ClassifierGuide":
        self.net.to(device)
        return self


def _labels(labels, batch: int, num_classes: int, device) -> Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    labels = labels.long().reshape(-1)
    if labels.shape[0] == 1 and batch > 1:
        labels = labels.expand(batch)
    if labels.shape[0] != batch:
        raise ValueError(f"{labels.shape[0]} class labels for a batch of {batch}")
    if ((labels < 0) | (labels >= num_classes)).any():
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"class label {bad} out of range; allowed 0..{num_classes - 1}")
    return labels


def log_prob_gradient(log_prob: Callable, x: Tensor, sigma, labels) -> Tensor:
    """``grad_x`` of ``log_prob(x, sigma, labels).sum()``: each sample's gradient of its own
    log-probability (samples are independent). Works under ``torch.no_grad``; ``x`` itself
    is not modified and needs no ``requires_grad``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob(xg, sigma, labels).sum(), xg)
    return grad


def classifier_guided(denoiser: Callable, guide, labels, scale: float, **kwargs):
    """``D'(x, sigma, **extra) = D(x, sigma, **extra) + scale * sigma^2 * grad_x log p(y | x, sigma)``.

    ``guide`` is a ``ClassifierGuide`` or any ``log_prob(x, sigma, labels) -> (B,)`` callable;
    ``labels`` is an int or a ``(B,)`` tensor. ``scale = 0`` returns the denoiser's output
    unchanged (no classifier call). Further keywords (e.g. ``interval``) go to
    ``guidance.ClassifierGuidance``, which implements the formula.
    """
    log_prob = guide.log_prob if isinstance(guide, ClassifierGuide) else guide
    return classifier_guidance(denoiser, log_prob, scale, labels=torch.as_tensor(labels), **kwargs)


def _check_keys(cfg: dict, what: str) -> None:
    allowed = {f.name for f in fields(ClassifierConfig)}
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"{what} has no option(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")



# ----------------------------------------------------------------------------- save / load


def _check_out_dir(out_dir: str) -> None:
    """Only an absent path, an empty folder or an earlier classifier folder may be replaced."""
    if os.path.isfile(out_dir):
        raise CheckpointError(f"{out_dir} is a file; the classifier is written as a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, META_FILE)):
        raise CheckpointError(f"{out_dir} exists and is not a classifier folder (no {META_FILE}); "
                              "refusing to replace it")


def _write_folder(out_dir: str, tensors: dict[str, Tensor], meta: dict) -> None:
    """Write ``model.safetensors`` and ``classifier.json`` into a hidden temporary folder next to
    ``out_dir``, flush both, then rename it into place (an earlier folder is moved aside first
    and deleted only after the new one is in place)."""
    _check_out_dir(out_dir)
    final = os.path.abspath(out_dir)
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    old = os.path.join(parent, f".old-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        path = os.path.join(tmp, MODEL_FILE)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path,
                  metadata={"format": FORMAT})
        ckpt._fsync(path)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_classifier(path: str, device: str = "cpu") -> ClassifierGuide:
    """Load a classifier folder written by ``train_classifier`` (or either file inside it).

    Only JSON and safetensors are read: a ``model.safetensors`` whose content is not
    safetensors (e.g. a renamed pickle) raises ``CheckpointError`` naming the file, before
    anything is deserialized."""
    folder = os.path.dirname(path) if os.path.basename(path) in (MODEL_FILE, META_FILE) else path
    meta_path, model_path = os.path.join(folder, META_FILE), os.path.join(folder, MODEL_FILE)
    if not os.path.isdir(folder):
        raise CheckpointError(f"classifier folder {path!r} does not exist")
    for p in (meta_path, model_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"{folder} is not a classifier folder: {os.path.basename(p)} is missing")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not an undiffuse classifier description (format {FORMAT!r})")
    cfg = {k: v for k, v in meta["config"].items() if k != "kind"}
    try:
        _check_keys(cfg, meta_path)
        net = NoiseClassifier(ClassifierConfig(**cfg))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: bad network config: {e}") from None
    tensors = ckpt.load_tensors(model_path, device="cpu")  # checks the content is safetensors first
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{model_path} does not match the network in {meta_path}: {e}") from None
    net.to(device).eval().requires_grad_(False)
    return ClassifierGuide(net, sigma_data=meta["sigma_data"], sigma_min=meta.get("sigma_min", 0.002),
                           sigma_max=meta.get("sigma_max", 80.0), class_names=meta.get("class_names"), meta=meta)
