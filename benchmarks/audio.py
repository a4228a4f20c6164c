#!/usr/bin/env python
"""Spoken digits from noise at equal CPU time: undiffuse's waveform and log-mel recipes against
diffusers' audio loops at (about) equal parameter count, scored by the in-project spoken-digit
classifier.

    python benchmarks/audio.py [--budget 900] [--samples 500] [--threads 1] [--only NAME ...]
        [--out runs/bench_audio] [--seed 0] [--again] [--render] [--write BENCHMARKS.md] [--picture PNG]

Protocol. Five recipes train on the same data, ``spoken-digits`` (the training voices, 8 kHz,
8192-sample clips), for ``--budget`` seconds of training each, on ``--threads`` threads, two at a
time in the order below (a waveform pair, then a mel pair, so each pair shares the machine alike;
``--only`` re-runs a subset, paired in the same order):

* ``undiffuse-wave`` / ``undiffuse-mel``: the CLI as a user runs it, ``undiffuse train --data
  spoken-digits --representation wave|mel --conditioning class --time-budget B`` (``--no-experts``
  for mel, one network); samples by ``undiffuse sample --class all --num N --format npz`` (the
  run's own sampler: Heun, 18 steps).
* ``undiffuse-mel-experts``: ``train ... --experts`` (the default for this data), two experts that
  split the noise levels in one command, half the budget each, one after the other: a 1-D U-Net
  over time reading each frame's 64 bands as channels, trained on high noise levels (preset
  audio-mel-high), then the mel recipe's U-Net trained on low ones (audio-mel-low); sampled by
  the same ``sample`` command, which uses the pair and its recommendation (hand-off at sigma 1,
  guidance 2 (2.5 before 2026-12-07), Euler ancestral, 20 steps: chosen on a pilot pair and on the
  benchmark pairs of three training seeds).
* ``diffusers-wave``: ``UNet1DModel`` in the Dance Diffusion layout (Fourier time embedding, no
  skip in the outer block, attention in the inner ones), trained as Dance Diffusion is: v
  objective on the cosine path ``x_t = cos(pi t / 2) x0 + sin(pi t / 2) eps``, ``t ~ U(0, 1)``,
  AdamW lr 1e-4, batch 8 (its layers run at the full 8 kHz rate: a step of 32 costs about
  12 s here), EMA 0.999; sampled with ``IPNDMScheduler`` as ``DanceDiffusionPipeline`` does, but
  50 steps instead of its 100 and only 100 samples (a sample costs about 0.1 s per step here). It has no class input: its samples are unconditional.
* ``diffusers-mel``: ``UNet2DModel`` with a class embedding on the same normalised log-mel
  spectrograms as ``undiffuse-mel``, trained as diffusers' ``train_unconditional`` example
  (epsilon, 1000 linear-beta DDPM steps, AdamW lr 1e-4, batch 32, EMA with warm-up), sampled
  with ``DDIMScheduler``, 50 steps (the audio-diffusion pipeline's default), turned into sound
  by the same Griffin-Lim as ``undiffuse-mel``; 100 samples (its layers work at 64 x 64).

Scores (``metrics.evaluate.evaluate``, feature space ``spoken-digits``): ``fd`` of N samples
against every training clip (and of the same 100 for every recipe, 10 per class where classes
were asked for, since FD grows as the sample count falls), ``adherence`` (the classifier reads the requested digit; not for
the unconditional ``diffusers-wave``), ``is``; sampling throughput in samples per second
(including Griffin-Lim for the mel recipes). The floor is two random halves of the training
clips scored against each other; the classifier's accuracy on the held-out voices is stated.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _sections import command, finish, load_results, log, machine, rerun_arguments, save_results

START, END = "<!-- audio:start -->", "<!-- audio:end -->"
SUBSET = 100  # every recipe is also scored on this many samples (equally many per class)
PEER_WAVE_SAMPLES, PEER_WAVE_STEPS = 100, 50  # full-rate sampling costs about 0.1 s per sample and step here
PEER_MEL_SAMPLES = 100  # full-resolution (64 x 64) layers: about 0.05 s per sample and step here
RECIPES = ("undiffuse-wave", "diffusers-wave", "undiffuse-mel", "diffusers-mel", "undiffuse-mel-experts")


def real_clips():
    from undiffuse import data
    ds = data.load("spoken-digits")
    return ds.get(slice(None)), ds.labels


def score(waves: np.ndarray, labels, reference: np.ndarray) -> dict:
    from undiffuse.metrics.evaluate import evaluate
    res = evaluate(waves, reference, labels=labels, kid_subsets=20, kid_subset_size=min(500, len(waves)))
    return {k: res[k] for k in ("fd", "kid", "precision", "recall", "is") if k in res} | (
        {"adherence": res["adherence"]} if "adherence" in res else {})


def first_per_class(labels, n: int) -> np.ndarray:
    """Indices of ``n`` samples, equally many of each class (the first ones), or the first ``n``."""
    if labels is None:
        return np.arange(n)
    labels = np.asarray(labels)
    per = n // len(np.unique(labels))
    return np.sort(np.concatenate([np.nonzero(labels == c)[0][:per] for c in np.unique(labels)]))


# ----------------------------------------------------------------------------- undiffuse

def run_undiffuse(args, name: str, out: Path) -> dict:
    """``undiffuse-wave`` / ``undiffuse-mel``: one run of the default recipe for the whole budget
    (``--no-experts`` for mel); ``undiffuse-mel-experts``: ``train --experts``, the pair of
    experts in one command (``training.expert_route``), sampled with the run's recommendation."""
    rep = name.split("-")[1]
    npz = out / f"{name}.npz"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    experts = name.endswith("experts")
    run = out / name
    train = [sys.executable, "-m", "undiffuse", "train", "--data", "spoken-digits", "--representation", rep,
             "--conditioning", "class", "--time-budget", f"{args.budget}s", "--out", str(run), "--no-progress",
             "--seed", str(args.seed)]
    if rep == "mel":
        train.append("--experts" if experts else "--no-experts")
    log(" ".join(train[2:]))
    subprocess.run(train, check=True, env=env)
    sample = [sys.executable, "-m", "undiffuse", "sample", "--checkpoint", str(run), "--class", "all", "--num",
              str(args.samples), "--format", "npz", "--out", str(npz), "--no-progress"]
    log(" ".join(sample[2:]))
    t0 = time.perf_counter()
    subprocess.run(sample, check=True, env=env)
    secs = time.perf_counter() - t0
    with np.load(npz) as z:
        waves, labels = z["samples"], z["labels"]
    from undiffuse import nets
    rec = {"steps": 0, "train_seconds": 0.0, "params": 0}
    for r in ((run / "expert-high", run) if experts else (run,)):
        cfg = json.loads((r / "config.json").read_text())
        state = json.loads((r / "checkpoints" / (r / "latest").read_text().strip() / "state.json").read_text())
        rec["steps"] += state["step"]
        rec["train_seconds"] += state["elapsed"]
        rec["params"] += nets.num_parameters(nets.build(cfg["model"]))
    s = cfg["sample"]
    sampler = f"{s['sampler']}, {s['steps']} steps"
    if s.get("expert"):
        sampler += f", expert above sigma {s['expert_above']:g}"
    if s.get("guidance", 1) != 1:
        sampler += f", guidance {s['guidance']:g}"
    return {**rec, "batch": cfg["optim"]["batch_size"], "sampler": sampler, "sample_seconds": secs,
            "samples_per_s": len(waves) / secs, "conditional": True, "waves": waves, "labels": labels}


# ----------------------------------------------------------------------------- diffusers

def peer_loop(unet, data: torch.Tensor, labels, budget: float, loss_fn, lr: float = 1e-4, batch: int = 32):
    """AdamW (the examples' betas and weight decay), gradient clipping at 1, a 500-step warm-up
    then cosine over the steps the budget allows (measured over the first 15%), EMA; stops after
    ``budget`` seconds of training steps. Returns the EMA network and the step count."""
    from diffusers.optimization import get_scheduler

    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    warmup = 500
    sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=10**9)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    perm, pos, step, elapsed, horizon = torch.randperm(len(data), generator=gen), 0, 0, 0.0, None
    unet.train()
    while elapsed < budget:
        t0 = time.perf_counter()
        if pos + batch > len(data):
            perm, pos = torch.randperm(len(data), generator=gen), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss = loss_fn(unet, data[idx], labels[idx] if labels is not None else None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))  # EMA with warm-up
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        elapsed += time.perf_counter() - t0
        if horizon is None and elapsed >= 0.15 * budget:
            horizon = max(warmup + 1, round(step / elapsed * budget))
            sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=horizon)
            for _ in range(step):
                sched.step()
            log(f"[peer] {step / elapsed:.2f} steps/s: cosine horizon {horizon} steps")
    return ema, step, elapsed


def run_diffusers_wave(args, out: Path) -> dict:
    from diffusers import IPNDMScheduler, UNet1DModel

    torch.manual_seed(0)
    waves, _ = real_clips()
    channels = (16, 32, 32, 64, 64, 96, 96, 96)  # attention heads of 32 channels; 3.8M parameters (undiffuse-wave: 4.3M)
    unet = UNet1DModel(sample_size=8192, sample_rate=8000, in_channels=1, out_channels=1, extra_in_channels=16,
                       time_embedding_type="fourier", time_embedding_dim=16, flip_sin_to_cos=True,
                       use_timestep_embedding=False, block_out_channels=channels,
                       down_block_types=("DownBlock1DNoSkip",) + ("DownBlock1D",) * 4 + ("AttnDownBlock1D",) * 3,
                       up_block_types=("AttnUpBlock1D",) * 3 + ("UpBlock1D",) * 4 + ("UpBlock1DNoSkip",),
                       mid_block_type="UNetMidBlock1D", layers_per_block=1, downsample_each_block=False)

    def v_loss(net, x0, _labels):
        t = torch.rand(len(x0))
        alpha, sigma = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None, None]
        eps = torch.randn_like(x0)
        v = alpha * eps - sigma * x0
        return torch.nn.functional.mse_loss(net(alpha * x0 + sigma * eps, t).sample, v)

    ema, steps, secs = peer_loop(unet, waves, None, args.budget, v_loss, batch=8)  # full-rate layers: small batches
    sched = IPNDMScheduler()
    t0 = time.perf_counter()
    n = min(args.samples, PEER_WAVE_SAMPLES)
    outs, noise = [], torch.randn(n, 1, 8192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i in range(0, n, 50):
            sched.set_timesteps(PEER_WAVE_STEPS)
            x = noise[i:i + 50]
            for t in sched.timesteps:
                x = sched.step(ema(x, t).sample, t, x).prev_sample
            outs.append(x.clamp(-1, 1))
    sample_secs = time.perf_counter() - t0
    return {"steps": steps, "train_seconds": secs, "params": sum(p.numel() for p in unet.parameters()), "batch": 8,
            "sampler": f"IPNDM, {PEER_WAVE_STEPS} steps", "sample_seconds": sample_secs, "samples_per_s": n / sample_secs,
            "conditional": False, "waves": torch.cat(outs).numpy(), "labels": None}


def run_diffusers_mel(args, out: Path) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    from undiffuse.data.audio import mel_spec_for

    torch.manual_seed(0)
    waves, labels = real_clips()
    spec = mel_spec_for(8000)
    mels = torch.cat([spec.encode(waves[i:i + 256]) for i in range(0, len(waves), 256)])
    unet = UNet2DModel(sample_size=64, in_channels=1, out_channels=1, layers_per_block=1, norm_num_groups=16,
                       block_out_channels=(48, 96, 96), num_class_embeds=10,  # 2.5M parameters (undiffuse-mel: 2.6M)
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),  # attention at 16 x 16
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")

    def eps_loss(net, x0, y):
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),))
        return torch.nn.functional.mse_loss(net(ddpm.add_noise(x0, noise, t), t, class_labels=y).sample, noise)

    ema, steps, secs = peer_loop(unet, mels, labels, args.budget, eps_loss)
    ddim = DDIMScheduler.from_config(ddpm.config)
    n = min(args.samples, PEER_MEL_SAMPLES)
    want = torch.arange(n) % 10
    noise = torch.randn(n, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    outs = []
    with torch.no_grad():
        for i in range(0, n, 100):
            ddim.set_timesteps(50)
            x = noise[i:i + 100]
            for t in ddim.timesteps:
                x = ddim.step(ema(x, t, class_labels=want[i:i + 100]).sample, t, x).prev_sample
            outs.append(spec.decode(x.clamp(-1, 1)))
    sample_secs = time.perf_counter() - t0
    return {"steps": steps, "train_seconds": secs, "params": sum(p.numel() for p in unet.parameters()), "batch": 32,
            "sampler": "DDIM, 50 steps (+ Griffin-Lim)", "sample_seconds": sample_secs,
            "samples_per_s": n / sample_secs, "conditional": True,
            "waves": torch.cat(outs).numpy(), "labels": want.numpy()}


# ----------------------------------------------------------------------------- driver

def child(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    name = args.child
    rec = run_undiffuse(args, name, out) if name.startswith("undiffuse") else \
        {"diffusers-wave": run_diffusers_wave, "diffusers-mel": run_diffusers_mel}[name](args, out)
    waves, labels = rec.pop("waves"), rec.pop("labels")
    reference = real_clips()[0].numpy()
    rec.update(score(waves, labels, reference), samples=len(waves))
    sub = first_per_class(labels, SUBSET)
    rec["fd_subset"] = score(waves[sub], None if labels is None else labels[sub], reference)["fd"]
    np.savez(out / f"{name}-samples.npz", samples=waves[:40], **({"labels": labels[:40]} if labels is not None else {}))
    print(json.dumps(rec))
    return 0


def floor_and_classifier(counts) -> dict:
    """The real-vs-real floor: two random halves of the training clips, scored against each other
    (``fd``), and at each sample count N in ``counts`` (``fd_at``): N real clips (equally many per
    digit) scored against all the other training clips, as N samples are scored against all of
    them. FD's estimate grows as N falls, so a recipe's fd is compared with the floor at its N."""
    from undiffuse.metrics import speech_features as sf
    x, y = real_clips()
    perm = np.random.default_rng(0).permutation(len(x))
    a, b = perm[: len(x) // 2], perm[len(x) // 2:]
    floor = score(x[a].numpy(), y[a].numpy(), x[b].numpy())
    sub = a[first_per_class(y[a].numpy(), SUBSET)]
    floor["fd_subset"] = score(x[sub].numpy(), None, x[b].numpy())["fd"]
    floor["fd_at"] = {}
    for n in sorted(set(counts)):
        sub = a[first_per_class(y[a].numpy(), n)]
        rest = np.setdiff1d(np.arange(len(x)), sub)
        floor["fd_at"][str(n)] = score(x[sub].numpy(), None, x[rest].numpy())["fd"]
    return {"floor": floor, "heldout_accuracy": sf.heldout_accuracy()}


def sample_counts(results: dict, samples: int) -> list[int]:
    return sorted({samples, SUBSET, *(r["samples"] for k, r in results.items() if not k.startswith("_"))})


def markdown(results: dict) -> str:
    meta = results.get("_meta", {})
    floor = meta.get("floor", {})
    lines = [START, "## Spoken digits: waveform and log-mel recipes against diffusers' audio loops", "",
             f"`{meta.get('command', '')}` on {meta.get('machine', {}).get('cpu', '?')} "
             f"({meta.get('machine', {}).get('date', '')}); each recipe trains {meta.get('budget', '?'):g} s on "
             f"{meta.get('threads', '?')} thread(s), two at a time (the waveform pair, the mel pair, then the mel "
             f"experts beside a re-run of undiffuse-mel). "
             f"{meta.get('samples', '?')} samples per recipe, scored in the spoken-digit classifier's features "
             f"against the {meta.get('reference', '?')} training clips (classifier accuracy on held-out voices: "
             f"{meta.get('heldout_accuracy', float('nan')):.3f}). Protocol: `benchmarks/audio.py`.", "",
             f"| recipe | params | steps | fd (samples) | fd / floor at its count | fd, {SUBSET} samples | adherence | "
             f"IS | samples/s | sampler |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    at = floor.get("fd_at", {})
    if floor:
        lines.append(f"| real vs real (two halves) | | | {floor['fd']:.3f} ({int(meta.get('reference', 0)) // 2}) | | "
                     f"{floor.get('fd_subset', float('nan')):.3f} | {floor['adherence']:.3f} | {floor['is']:.2f} | | |")
        for n, fd in sorted(at.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| real clips vs the other training clips | | | {fd:.3f} ({n}) | 1.00 | | | | | |")
    for name in RECIPES:
        r = results.get(name)
        if not r:
            continue
        adh = f"{r['adherence']:.3f}" if "adherence" in r else "n/a (unconditional)"
        base = at.get(str(r["samples"]), floor.get("fd"))
        ratio = f"{r['fd'] / base:.2f}" if base else ""
        lines.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['fd']:.3f} ({r['samples']}) | {ratio} | "
                     f"{r['fd_subset']:.3f} | {adh} | {r['is']:.2f} | {r['samples_per_s']:.2f} | {r['sampler']} |")
    lines += ["", meta.get("notes", ""), END]
    return "\n".join(lines) + "\n"


def picture(out: Path, path: str, per: int = 3) -> None:
    """Spectrograms, one row per digit: ``per`` real clips, then ``per`` samples of each mel
    recipe asked for that digit (from its full ``NAME.npz``)."""
    from undiffuse.inference import generate as gen
    from undiffuse.io.audio import spectrogram
    x, y = real_clips()
    columns = [(x.numpy(), y.numpy())]
    for name in ("undiffuse-mel", "undiffuse-mel-experts"):
        with np.load(out / f"{name}.npz") as z:
            columns.append((z["samples"], z["labels"]))
    tiles = [spectrogram(w[i, 0], 8000) for digit in range(10) for w, lab in columns
             for i in np.nonzero(lab == digit)[0][:per]]
    gen.save_png(path, gen.grid(np.stack(tiles), nrow=per * len(columns), pad=2))
    log(f"wrote {path}: per row (digit 0-9) {per} real clips, {per} undiffuse-mel and {per} undiffuse-mel-experts "
        f"samples")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=900.0, help="training seconds per recipe")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="training seed of the undiffuse recipes (default: 0)")
    p.add_argument("--only", nargs="*", choices=RECIPES)
    p.add_argument("--out", default="runs/bench_audio")
    p.add_argument("--picture", metavar="PNG", help="also write spectrograms of real clips and of both mel recipes' "
                   "samples here (e.g. docs/audio_mel_samples.png)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    rerun_arguments(p)
    args = p.parse_args()
    if args.child:
        return child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = load_results(path)
    if not args.render:
        todo = [n for n in RECIPES if n in (args.only or RECIPES) and (args.again or n not in results)]
        for i in range(0, len(todo), 2):  # two at a time, in RECIPES order
            names = todo[i:i + 2]
            procs = {n: subprocess.Popen([sys.executable, __file__, "--child", n, "--budget", str(args.budget),
                                          "--samples", str(args.samples), "--threads", str(args.threads),
                                          "--seed", str(args.seed),
                                          "--out", str(out)], stdout=subprocess.PIPE, text=True,
                                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                     for n in names}
            for n, proc in procs.items():
                stdout, _ = proc.communicate()
                if proc.returncode != 0:
                    log(f"{n} failed with exit {proc.returncode}")
                    continue
                results[n] = json.loads(stdout.strip().splitlines()[-1])
                save_results(path, results)
        results["_meta"] = {**results.get("_meta", {}), **floor_and_classifier(sample_counts(results, args.samples)),
                            "command": command(),
                            "machine": machine(), "budget": args.budget, "threads": args.threads, "seed": args.seed,
                            "samples": args.samples, "reference": len(real_clips()[0])}
        save_results(path, results)
    elif "fd_at" not in results.get("_meta", {}).get("floor", {"fd_at": 0}):  # results from before the matched floor
        results["_meta"].update(floor_and_classifier(sample_counts(results, results["_meta"]["samples"])))
        save_results(path, results)
    if args.picture:
        picture(out, args.picture)
    return finish(args, results, markdown)


if __name__ == "__main__":
    sys.exit(main())
