"""What the in-project evaluation networks (the digits features, the emoji image-text scorer)
share: deterministic training that leaves the caller's torch state alone, and safetensors
weights cached atomically under a content-hash name."""
from __future__ import annotations

import contextlib
import json
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from undiffuse.utils.atomic import write_atomic


@contextlib.contextmanager
def deterministic(threads: int):
    """``threads`` torch threads, deterministic algorithms and a forked global RNG for the
    block; the caller's thread count, flags and RNG state come back afterwards."""
    old = torch.get_num_threads()
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(old)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)


def save_weights(net: torch.nn.Module, path: str, metadata: dict) -> None:
    """The network's state as safetensors at ``path`` (atomic), with string ``metadata``."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=meta), suffix=".safetensors.tmp")


def load_weights(make, path: str, what: str) -> torch.nn.Module | None:
    """``make()`` (built without touching the global RNG) with the weights of ``path`` (eval
    mode), or None (with a warning naming ``what``) when the file is missing, unreadable, of
    another shape or not finite."""
    if not os.path.exists(path):
        return None
    try:
        with torch.random.fork_rng(devices=[]):
            net = make()
        state = load_file(path)
        net.load_state_dict(state, strict=True)
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise ValueError("non-finite weights")
    except Exception as e:  # corrupt / truncated / foreign file: the caller retrains and overwrites
        warnings.warn(f"cached {what} weights {path} unreadable ({type(e).__name__}: {e}); retraining",
                      RuntimeWarning, stacklevel=3)
        return None
    return net.eval()


def _stat_key(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def cached_network(memo: dict, path: str, make, train, metadata: dict, what: str) -> dict:
    """The memo entry (``{"key", "net", ...}``) of the frozen network whose weights live at
    ``path``: kept while the file is unchanged, else loaded from it, else ``train()``-ed and
    saved there. One entry at a time (the cache folder may change between calls); callers may
    keep derived values (a float64 copy, statistics) in the entry."""
    key = _stat_key(path)
    hit = memo.get(path)
    if hit is not None and key is not None and hit["key"] == key:
        return hit
    net = load_weights(make, path, what)
    if net is None:
        net = train()
        save_weights(net, path, metadata)
    for p in net.parameters():
        p.requires_grad_(False)
    memo.clear()
    memo[path] = {"key": _stat_key(path), "net": net}
    return memo[path]


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each (1, 8, 8) image by random integer offsets in [-max_shift, max_shift] (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_classifier(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hp: dict) -> torch.nn.Module:
    """The feature networks' recipe: He-normal weights and zero biases drawn from a generator
    seeded with ``hp["seed"]``, then ``hp["epochs"]`` shuffled epochs of cross-entropy with AdamW
    (``lr``, ``weight_decay``) under a one-cycle schedule, batches of ``hp["batch"]``, each image
    shifted by up to ``hp["shift"]`` pixels (``random_shift``) and given N(0, ``pixel_noise``^2)
    noise (clipped to [0, 1]). ``x``: (N, 1, H, W) in [0, 1]; ``y``: (N,) int64. Run it under
    :func:`deterministic` for bitwise repeatable weights."""
    gen = torch.Generator().manual_seed(hp["seed"])
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.zero_()
    n, bs = len(x), hp["batch"]
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"], total_steps=hp["epochs"] * ((n + bs - 1) // bs))
    net.train()
    for _ in range(hp["epochs"]):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            b = perm[i:i + bs]
            xb = random_shift(x[b], hp["shift"], gen)
            xb = (xb + hp["pixel_noise"] * torch.randn(xb.shape, generator=gen)).clamp(0, 1)
            loss = F.cross_entropy(net(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def holdout_accuracy(images: np.ndarray, labels: np.ndarray, train, seed: int = 0) -> float:
    """Test accuracy of a recipe: ``train(images, labels)`` on a random 80% (numpy
    ``default_rng(seed)``), evaluated once on the rest."""
    perm = np.random.default_rng(seed).permutation(len(images))
    cut = int(round(0.8 * len(images)))
    net = train(images[perm[:cut]], labels[perm[:cut]])
    with torch.no_grad():
        pred = net(torch.as_tensor(images[perm[cut:]])).argmax(1).numpy()
    return float((pred == labels[perm[cut:]]).mean())
