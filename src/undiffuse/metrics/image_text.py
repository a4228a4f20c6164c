"""An in-project image-text scorer for the ``emoji`` data (the role CLIP plays elsewhere).

A small image encoder is trained contrastively (InfoNCE in both directions, Radford et al.
2021) against the *frozen* sentence embeddings of all-MiniLM-L6-v2 (the pooled, L2-normalised
384-d vector of ``steering.text.sentence_embeddings``, passed in by the caller as ``sentence``)
of the training emoji's captions. Its image embedding and the prompt's sentence embedding then live
in one space:

* ``clip_score``: the mean cosine between each image and its own prompt;
* ``prompt_accuracy``: the share of images whose own prompt scores above all of 9 others drawn
  at random (seeded) from the names of every emoji (chance: 0.10);
* the 256-d pooled activations before the projection are the **features** of ``fd`` and
  precision / recall for emoji (``evaluate --features emoji``).

Network (``ImageEncoder``): images (N, 3, 32, 32) in [0, 1] (other sizes are resized with an
antialiased bilinear filter, greyscale repeated) -> conv 3x3 32 -> three stages of [conv 3x3
stride 2, conv 3x3] with 64 / 128 / 256 channels, GroupNorm(8) and SiLU -> global average pool
(256 = the features) -> linear 384, L2-normalised.

Recipe (``RECIPE``, ``HPARAMS``): AdamW (lr 2e-3, weight decay 0.05), cosine schedule with a
warm-up, batches of 256 images each with one of its caption wordings drawn at random, a learned
temperature. Augmentation (so generated, slightly blurred images are scored fairly): shifts of
up to 2 pixels (white fill), a 2x down-and-up blur on half the images, Gaussian pixel noise of
sd 0.03. One thread, deterministic algorithms, every draw from one seeded generator.

Trained on ``emoji`` (the training split) at 32x32; cached as safetensors under
``$UNDIFFUSE_CACHE`` by a SHA-256 over the images, captions, text-model checksum, recipe and
hyperparameters. ``report()`` scores the held-out emoji (``emoji:heldout``), which the
scorer never saw: retrieval among all held-out names and the 10-way prompt accuracy of real
images, the ceiling a generated sample can be compared with.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from undiffuse import data
from undiffuse.metrics.trained import deterministic, load_weights, save_weights
from undiffuse.utils.cache import cache_dir

RECIPE = "undiffuse-emoji-image-text-v1"
HPARAMS = {"width": 24, "features": 192, "steps": 400, "batch": 128, "lr": 2e-3, "warmup": 40,
           "weight_decay": 0.05, "shift": 2, "blur": 0.5, "pixel_noise": 0.03, "seed": 0, "threads": 1}
SIZE = 32
EMBED = 384
DISTRACTORS = 9
_MEMO: dict = {}


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]


class ImageEncoder(nn.Module):
    """``features(x)``: the 256-d pooled activations; ``forward(x)``: the unit 384-d embedding."""

    def __init__(self, width: int = 32, features: int = 256):
        super().__init__()
        w = width
        layers = _block(3, w, 1) + _block(w, 2 * w, 2)
        for cin, cout in ((2 * w, 4 * w), (4 * w, features)):
            layers += _block(cin, cout, 2) + _block(cout, cout, 1)
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(features, EMBED)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(self.features(x)), dim=-1)


def as_images(x, name: str = "images") -> torch.Tensor:
    """Float32 (N, 3, 32, 32) in [0, 1] from images (N, C, H, W) in [0, 1] (C 1 or 3)."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected images (N, 1 or 3, H, W) in [0, 1], got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


# ----------------------------------------------------------------------------- training

def _augment(x: torch.Tensor, hp: dict, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (white fill), a 2x blur on a share of the images, pixel noise."""
    n, s = len(x), hp["shift"]
    padded = F.pad(x, (s,) * 4, value=1.0)
    dy, dx = (torch.randint(0, 2 * s + 1, (n,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(SIZE))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(SIZE))[:, None, None, :]
    x = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    blurred = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    x = torch.where((torch.rand(n, generator=gen) < hp["blur"])[:, None, None, None], blurred, x)
    return (x + hp["pixel_noise"] * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train(images: torch.Tensor, wordings: list[list[str]], sentence, hp: dict | None = None) -> ImageEncoder:
    """Train the encoder on ``images`` (N, 3, 32, 32) in [0, 1], each with its caption wordings;
    ``sentence(texts)`` gives the frozen unit text embeddings (``steering.text.sentence_embeddings``);
    ``hp``: the hyperparameters (default: ``HPARAMS``)."""
    hp = HPARAMS if hp is None else hp
    targets = _targets(wordings, sentence)
    start = torch.tensor([0] + [len(r) for r in wordings]).cumsum(0)
    count = start[1:] - start[:-1]
    with deterministic(hp["threads"]):
        gen = torch.Generator().manual_seed(hp["seed"])
        torch.manual_seed(hp["seed"])  # the layers' default initialisation (global RNG forked)
        net = ImageEncoder(hp["width"], hp["features"])
        opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        net.train()
        for step in range(hp["steps"]):
            lr = hp["lr"] * min(1.0, (step + 1) / hp["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / hp["steps"]))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randperm(len(images), generator=gen)[:hp["batch"]]
            pick = start[idx] + (torch.rand(len(idx), generator=gen) * count[idx]).long().clamp(max=count[idx] - 1)
            img = net(_augment(images[idx], hp, gen))
            logits = net.logit_scale.clamp(max=math.log(100)).exp() * img @ targets[pick].T
            # a caption repeated in the batch is not a negative for the other images that have it
            repeated = (targets[pick] @ targets[pick].T > 0.999) & ~torch.eye(len(idx), dtype=torch.bool)
            logits = logits.masked_fill(repeated, -1e4)
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


def _targets(wordings: list[list[str]], sentence) -> torch.Tensor:
    return torch.as_tensor(sentence([w for row in wordings for w in row]), dtype=torch.float32)


# ----------------------------------------------------------------------------- the shared scorer

def _emoji_training_set():
    ds = data.load("emoji")
    return ds.get(torch.arange(len(ds))).add(1).div(2), ds.captions


def _key(images: torch.Tensor, wordings: list[list[str]], targets: torch.Tensor) -> str:
    """SHA-256 over the recipe, hyperparameters, images, captions and their text embeddings."""
    h = hashlib.sha256(RECIPE.encode())
    h.update(json.dumps(HPARAMS, sort_keys=True).encode())
    h.update((images * 255).round().to(torch.uint8).numpy().tobytes())
    h.update(json.dumps(wordings).encode())
    h.update(targets.numpy().tobytes())
    return h.hexdigest()[:24]


def scorer(sentence) -> ImageEncoder:
    """The emoji scorer for the text embeddings ``sentence(texts)``: memoised, else loaded from
    the cache, else trained (minutes, once)."""
    images, wordings = _emoji_training_set()
    path = os.path.join(cache_dir(), f"emoji_image_text_{_key(images, wordings, _targets(wordings, sentence))}"
                        f".safetensors")
    if path in _MEMO:
        return _MEMO[path]
    net = load_weights(lambda: ImageEncoder(HPARAMS["width"], HPARAMS["features"]), path, "emoji image-text scorer")
    if net is None:
        net = train(images, wordings, sentence, HPARAMS)
        save_weights(net, path, {"recipe": RECIPE, "hparams": HPARAMS})
    net.requires_grad_(False)
    _MEMO.clear()
    _MEMO[path] = net
    return net


@torch.no_grad()
def embed(images, net: ImageEncoder, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, 256), unit embeddings (N, 384))`` of images in [0, 1], float64."""
    x = as_images(images)
    parts = [(net.features(b), net(b)) for b in x.split(batch_size)]
    return (torch.cat([p[0] for p in parts]).double().numpy(), torch.cat([p[1] for p in parts]).double().numpy())


def emoji_names() -> list[str]:
    """The distractor pool of ``prompt_accuracy``: the name of every emoji (both splits)."""
    return [row[0] for row in data.load("emoji:all").captions]


def text_scores(embeddings: np.ndarray, prompts: list[str], sentence, *, pool: list[str] | None = None,
                seed: int = 0) -> dict:
    """``clip_score`` and ``prompt_accuracy`` of image embeddings against their prompts
    (distractors from ``pool``, default :func:`emoji_names`)."""
    if len(prompts) != len(embeddings):
        raise ValueError(f"{len(prompts)} prompts for {len(embeddings)} images; give one per image")
    pool = list(dict.fromkeys(pool if pool is not None else emoji_names()))
    own = torch.as_tensor(sentence(list(prompts))).double().numpy()
    others = torch.as_tensor(sentence(pool)).double().numpy()
    rng = np.random.default_rng(seed)
    own_cos = np.sum(embeddings * own, axis=1)
    wins = 0
    for i, p in enumerate(prompts):
        candidates = [j for j in rng.choice(len(pool), DISTRACTORS + 1, replace=False) if pool[j] != p][:DISTRACTORS]
        wins += bool(own_cos[i] > np.max(others[candidates] @ embeddings[i]))
    return {"clip_score": float(own_cos.mean()), "prompt_accuracy": wins / len(prompts),
            "prompt_accuracy_chance": 1 / (DISTRACTORS + 1), "distractors": DISTRACTORS,
            "distractor_pool": len(pool)}


def report(sentence, seed: int = 0) -> dict:
    """The scorer on real held-out emoji (never trained on): retrieval top-1 / top-5 among all
    held-out names, and ``prompt_accuracy`` / ``clip_score`` of the real images."""
    ds = data.load("emoji:heldout")
    images = ds.get(torch.arange(len(ds))).add(1).div(2)
    names = [row[0] for row in ds.captions]
    _, emb = embed(images, scorer(sentence))
    sims = emb @ torch.as_tensor(sentence(names)).double().numpy().T
    rank = (sims > np.diag(sims)[:, None]).sum(1)
    return {"heldout_images": len(ds), "retrieval_top1": float((rank == 0).mean()),
            "retrieval_top5": float((rank < 5).mean()), **text_scores(emb, names, sentence, seed=seed)}
