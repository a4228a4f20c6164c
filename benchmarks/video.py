#!/usr/bin/env python
"""Moving digits from noise at equal CPU time: undiffuse's video recipes (pixels, and a per-frame
autoencoder's latents) against diffusers' ``UNet3DConditionModel`` at about the same parameter
count in a plain training loop, scored frame by frame and clip by clip (issue 21).

    python benchmarks/video.py [--budget 1200] [--samples 200] [--threads 1] [--only NAME ...]
        [--out runs/bench_video] [--again] [--render] [--write BENCHMARKS.md] [--quick]

Protocol. Every recipe trains on the same data, ``moving-digits`` (8,000 training clips of 16
frames, 1 x 32 x 32, one or two mnist5k digits bouncing), for ``--budget`` seconds of training
steps (default 1200, 20 minutes), each in its own subprocess on ``--threads`` torch threads
(``OMP_NUM_THREADS`` for the commands it starts), two at a time in the order of ``ORDER`` (the
pixel recipe beside diffusers, then the latent recipe, alone or beside whatever ``--only`` left);
the 1-minute load average at each child's start and end is recorded.

* ``undiffuse-video`` (the default command, which takes the latent route on moving-digits) /
  ``undiffuse-video-pixels``: the CLI as a user types it, nothing else:
  ``python -m undiffuse train --data moving-digits --time-budget {B}s --out OUT/NAME
  --no-progress`` plus the recipe's flags (``UNDIFFUSE``: ``--no-latent``, or none: a per-frame
  autoencoder trained first for 30 % of the budget, then the ``video-latent`` preset on its
  latents), then ``sample --checkpoint OUT/NAME --num N --format npz`` (the run's own sampler,
  EMA weights, seeds 0..N-1; samples/s is the whole command's wall time, start-up and writing
  included, so a lower bound) and ``predict --checkpoint OUT/NAME --video moving-digits:heldout
  --index 0..P-1 --context 4 --frames 12 --format npz`` on the first P = 100 held-out clips
  (its JSON line: PSNR and SSIM per horizon beside the copy-last-frame baseline). Steps and
  parameters come from the run's checkpoint (the diffusion network; a latent run's autoencoder
  is counted apart).
* ``diffusers-video``: ``UNet3DConditionModel`` (``diffusers_unet``: blocks (32, 32, 48),
  one layer per block, spatial and temporal attention in the two coarse blocks, as ours has them,
  1.32M parameters against the pixel recipe's 1.34M) trained as diffusers' training examples
  train (``train_unconditional.py``; diffusers has no official text-to-video training example):
  ``DDPMScheduler`` (1000 steps, linear betas), epsilon objective, MSE, uniform integer
  timesteps, AdamW lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8, gradient clipping
  at 1, cosine learning rate, ``EMAModel(decay=0.9999, use_ema_warmup=True, inv_gamma=1,
  power=3/4)`` after every step, batch 8 as ours, clips in [-1, 1] as (B, C, T, H, W). One
  change for the budget: the example's 500 warm-up steps would outlast the whole run (about
  100 steps here), so warm-up is 10 % of the horizon (at most 500); the horizon is the steps
  the budget allows at the rate of a 3-step probe on a copy before training (outside the budget,
  as undiffuse's start-up measurement); training stops at the horizon or before a step that would
  end more than half a step past the budget, whichever comes first. The model
  needs ``encoder_hidden_states``: it gets a fixed zero tensor (B, 1, cross_attention_dim), so
  it is unconditional. Sampling: ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2) in 20
  steps (what diffusers' text-to-video docs swap in for speed) from the EMA weights, clip i from
  noise seeded i, timed; written by the project's ``write_samples`` as an npz like ours. It has
  no frame input, so it cannot predict: its prediction cells are n/a.

Scores (``metrics.video.evaluate_video`` against the 1,000 ``moving-digits:heldout`` clips):
per-frame ``fd`` (mnist5k classifier features), ``clip_fd`` (the in-project clip classifier,
FVD's role), ``identity`` (strict; ``identity_tolerant`` beside it), ``motion`` (px of RMS off
a constant-velocity bouncing path). Two real rows: N held-out clips against the training clips
(the brief's floor), and the first N training clips against the held-out clips (scored exactly
as a recipe's N samples are, so the fd each recipe should be read against).

The issue's goals are judged from the numbers in the "Read:" paragraph; the one on single-image
generation (per-frame fd within 2x of an image model at 32 x 32) is not measured here.

``--quick``: 20 s budgets, 8 samples, 8 prediction clips, 16 frames still: a plumbing check
whose numbers mean nothing.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _sections import command, finish, load_avg, load_results, log, machine, rerun_arguments, save_results

START, END = "<!-- video:start -->", "<!-- video:end -->"
FRAMES = 16                 # frames per clip (the data's default)
# recipe -> extra train flags; the default command takes the latent route on moving-digits
UNDIFFUSE = {"undiffuse-video-pixels": ("--no-latent",), "undiffuse-video": ()}
PEER = "diffusers-video"
ORDER = ("undiffuse-video-pixels", PEER, "undiffuse-video")  # run two at a time in this order
CONTEXT, FUTURE = 4, 12     # prediction: frames given, frames predicted
HORIZONS = (1, 4, 8)        # prediction horizons reported
PREDICT_CLIPS = 100         # first held-out clips predicted (--quick: 8)
PEER_BATCH, PEER_LR, PEER_MAX_WARMUP = 8, 1e-4, 500
PEER_STEPS, PEER_SAMPLE_BATCH = 20, 20  # DPM-Solver++ steps; clips per sampling batch
GOAL_IDENTITY, GOAL_FD_VS_PEER, GOAL_FD_VS_IMAGE = 0.95, 0.5, 2.0
SCORE_KEYS = ("fd", "clip_fd", "identity", "identity_tolerant", "identity_frames", "motion", "motion_one",
              "motion_two", "motion_tracked")


def moving_digits(split: str = "train"):
    from undiffuse import data
    return data.load("moving-digits" + (":heldout" if split == "heldout" else ""), frames=FRAMES)


def score(samples01: np.ndarray, reference, **kw) -> dict:
    """evaluate_video's numbers (``SCORE_KEYS``, and ``reference`` when computed)."""
    from undiffuse.metrics.video import evaluate_video
    res = evaluate_video(samples01, reference, **kw)
    return {k: res[k] for k in SCORE_KEYS} | ({"reference": res["reference"]} if "reference" in res else {})


# ----------------------------------------------------------------------------- undiffuse

def cli(cmd: list[str], log_path: Path, threads: int) -> tuple[str, float]:
    """An undiffuse command on ``threads`` threads, stderr to ``log_path``: its stdout and wall
    time; a failure ends the child, naming the log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log(f"$ {shlex.join(['python', *cmd[1:]])}")
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.run(cmd, check=False, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:4])} failed with exit code {proc.returncode}; see {log_path}")
    return proc.stdout, time.perf_counter() - t0


def last_json(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


def run_undiffuse(args, name: str, out: Path) -> dict:
    from undiffuse.inference import generate as gen

    run, npz, pred = out / name, out / f"{name}.npz", out / f"{name}-predict.npz"
    shutil.rmtree(run, ignore_errors=True)  # the trainer refuses a folder with checkpoints
    npz.unlink(missing_ok=True)
    pred.unlink(missing_ok=True)
    py = [sys.executable, "-m", "undiffuse"]
    train = py + ["train", "--data", "moving-digits", "--time-budget", f"{args.budget:g}s", "--out", str(run),
                  "--no-progress", *UNDIFFUSE[name]]
    stdout, train_wall = cli(train, out / f"{name}-train.log", args.threads)
    result = last_json(stdout)
    budget_lines = [ln[len("budget: "):] for ln in (out / f"{name}-train.log").read_text().splitlines()
                    if ln.startswith("budget: ")]
    sample = py + ["sample", "--checkpoint", str(run), "--num", str(args.samples), "--format", "npz", "--out",
                   str(npz), "--no-progress"]
    _, sample_wall = cli(sample, out / f"{name}-sample.log", args.threads)
    with np.load(npz) as z:
        samples, sampled_with = z["samples"], json.loads(str(z["parameters"]))
    index = ",".join(str(i) for i in range(args.predict_clips))
    predict = py + ["predict", "--checkpoint", str(run), "--video", "moving-digits:heldout", "--index", index,
                    "--context", str(CONTEXT), "--frames", str(FUTURE), "--format", "npz", "--out", str(pred)]
    stdout, predict_wall = cli(predict, out / f"{name}-predict.log", args.threads)
    prediction = last_json(stdout)["prediction"]

    loaded = gen.load_run(str(run))  # the weights sampled: the diffusion network's size, the autoencoder apart
    ae = loaded.decoder
    ae_seconds = float(ae.meta["training"]["seconds"]) if ae is not None else 0.0
    typed = [shlex.join(["python", *c[1:]]).replace(f"--index {index}", f"--index 0,...,{args.predict_clips - 1}")
             for c in (train, sample, predict)]
    return {"commands": typed, "preset": loaded.config.preset,
            "params": sum(p.numel() for p in loaded.denoiser.net.parameters()),
            "autoencoder_params": sum(p.numel() for p in ae.net.parameters()) if ae is not None else 0,
            "autoencoder_seconds": ae_seconds, "steps": int(loaded.step), "batch": loaded.config.optim.batch_size,
            "train_seconds": float(result["elapsed"]) + ae_seconds, "train_command_seconds": train_wall,
            "budget_lines": budget_lines, "sampler": f"{sampled_with['sampler']}, {sampled_with['steps']} steps",
            "sample_seconds": sample_wall, "samples_per_s": len(samples) / sample_wall,
            "predict_seconds": predict_wall, "prediction": prediction, "samples01": samples}


# ----------------------------------------------------------------------------- diffusers

def diffusers_unet(side: int):
    """``UNet3DConditionModel`` at about the pixel recipe's size (1.32M against 1.34M
    parameters): levels of 32, 32, 48 channels at 32, 16, 8 px, one layer per block (two on the
    way up, diffusers' rule), spatial + temporal attention in the two coarse blocks and the
    middle (ours: temporal attention at its two coarse levels, spatial at the coarsest).
    ``attention_head_dim`` 4 is, by diffusers' historical naming, 4 heads per block (its
    ``transformer_in``: 8 heads of 4 channels); GroupNorm of 16 groups (32 does not divide 48);
    ``cross_attention_dim`` 32, only ever fed zeros."""
    from diffusers import UNet3DConditionModel
    return UNet3DConditionModel(
        sample_size=side, in_channels=1, out_channels=1, block_out_channels=(32, 32, 48), layers_per_block=1,
        down_block_types=("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
        norm_num_groups=16, cross_attention_dim=32, attention_head_dim=4)


def peer_loss(unet, ddpm, clips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The examples' step (DDPM, Ho et al. 2020, eq. 14): epsilon MSE at a uniform integer
    timestep; ``clips`` (B, C, T, H, W) in [-1, 1]; a zero text embedding (B, 1, D)."""
    import torch.nn.functional as F
    noise = torch.randn(clips.shape, generator=gen)
    t = torch.randint(0, ddpm.config.num_train_timesteps, (len(clips),), generator=gen)
    empty = torch.zeros(len(clips), 1, unet.config.cross_attention_dim)  # unconditional: no text
    return F.mse_loss(unet(ddpm.add_noise(clips, noise, t), t, encoder_hidden_states=empty).sample, noise)


def peer_rate(unet, ddpm, batch: torch.Tensor) -> float:
    """Seconds per training step: 3 steps of a copy (the first not timed), outside the budget."""
    probe = copy.deepcopy(unet).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=PEER_LR)
    gen, times = torch.Generator().manual_seed(1), []
    for _ in range(3):
        t0 = time.perf_counter()
        peer_loss(probe, ddpm, batch, gen).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return float(np.mean(times[1:]))


def peer_train(unet, ds, budget: float) -> dict:
    """The loop (see the module docstring) for ``budget`` seconds of steps; returns the EMA network."""
    from diffusers import DDPMScheduler, UNet3DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    gen = torch.Generator().manual_seed(0)

    def clips(idx):
        return ds.get(idx).permute(0, 2, 1, 3, 4).contiguous()  # (B, T, C, H, W) -> (B, C, T, H, W)

    step_s = peer_rate(unet, ddpm, clips(torch.arange(PEER_BATCH)))
    horizon = max(2, round(budget / step_s))
    warmup = min(PEER_MAX_WARMUP, max(1, horizon // 10))
    log(f"[diffusers] {step_s:.2f} s per step measured: horizon {horizon} steps, warm-up {warmup}")
    opt = torch.optim.AdamW(unet.parameters(), lr=PEER_LR, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=horizon)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=UNet3DConditionModel, model_config=unet.config)
    perm, pos, step, elapsed, losses = torch.randperm(len(ds), generator=gen), 0, 0, 0.0, []
    unet.train()
    while elapsed + 0.5 * (elapsed / step if step else step_s) < budget and step < horizon:  # ends nearest the budget
        t0 = time.perf_counter()
        if pos + PEER_BATCH > len(ds):
            perm, pos = torch.randperm(len(ds), generator=gen), 0
        loss = peer_loss(unet, ddpm, clips(perm[pos:pos + PEER_BATCH]), gen)
        pos += PEER_BATCH
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        step += 1
        elapsed += time.perf_counter() - t0
        losses.append(loss.item())
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    ema.copy_to(ema_unet.parameters())
    log(f"[diffusers] {step} steps in {elapsed:.1f} s, last losses {np.mean(losses[-20:]):.4f}")
    return {"ema": ema_unet, "ddpm": ddpm, "steps": step, "train_seconds": elapsed, "horizon": horizon,
            "warmup": warmup, "probe_step_seconds": step_s, "final_loss": float(np.mean(losses[-20:]))}


@torch.no_grad()
def peer_sample(unet, ddpm_config, n: int, shape: tuple) -> torch.Tensor:
    """``n`` clips (N, C, T, H, W) in [-1, 1] by DPM-Solver++ (Lu et al. 2022, order 2 multistep)
    in ``PEER_STEPS`` steps; clip i starts from noise seeded i, whatever the batch."""
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler.from_config(ddpm_config, algorithm_type="dpmsolver++", solver_order=2)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(i)) for i in range(n)])
    out = []
    for i in range(0, n, PEER_SAMPLE_BATCH):
        sched.set_timesteps(PEER_STEPS)  # resets the multistep history for each batch
        x = noise[i:i + PEER_SAMPLE_BATCH] * sched.init_noise_sigma
        empty = torch.zeros(len(x), 1, unet.config.cross_attention_dim)
        for t in sched.timesteps:
            eps = unet(sched.scale_model_input(x, t), t, encoder_hidden_states=empty).sample
            x = sched.step(eps, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def run_diffusers(args, out: Path) -> dict:
    from diffusers.utils import logging as dlog

    from undiffuse.io.writers import write_samples

    dlog.set_verbosity_error()
    torch.manual_seed(0)
    ds = moving_digits()
    t, c, h, w = ds.shape
    unet = diffusers_unet(h)
    params = sum(p.numel() for p in unet.parameters())
    log(f"[diffusers] UNet3DConditionModel, {params / 1e6:.3f}M parameters; training {args.budget:g} s")
    trained = peer_train(unet, ds, args.budget)
    t0 = time.perf_counter()
    x = peer_sample(trained["ema"], trained["ddpm"].config, args.samples, (c, t, h, w))
    sample_secs = time.perf_counter() - t0
    samples01 = ((x + 1) / 2).permute(0, 2, 1, 3, 4).numpy()  # (N, T, C, H, W) in [0, 1]
    npz = out / f"{PEER}.npz"
    npz.unlink(missing_ok=True)
    sampler = f"DPM-Solver++ (2M), {PEER_STEPS} steps"
    write_samples(samples01, str(npz), format="npz", seed=0, watermark=False,
                  params={"model": "diffusers UNet3DConditionModel", "sampler": sampler, "steps": trained["steps"]})
    return {"params": params, "steps": trained["steps"], "batch": PEER_BATCH, "train_seconds": trained["train_seconds"],
            "horizon": trained["horizon"], "warmup": trained["warmup"], "lr": PEER_LR,
            "probe_step_seconds": trained["probe_step_seconds"], "final_loss": trained["final_loss"],
            "sampler": sampler, "sample_seconds": sample_secs, "samples_per_s": args.samples / sample_secs,
            "prediction": None, "samples01": samples01}


# ----------------------------------------------------------------------------- driver

def child(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = load_avg()
    name = args.child
    rec = run_diffusers(args, out) if name == PEER else run_undiffuse(args, name, out)
    samples01 = rec.pop("samples01")
    log(f"[{name}] scoring {len(samples01)} clips against moving-digits:heldout")
    rec.update(score(samples01, moving_digits("heldout")), samples=len(samples01), load_avg_start=start,
               load_avg_end=load_avg(), threads=args.threads)
    print(json.dumps(rec))
    return 0


def real_rows(n: int) -> dict:
    """The real-data rows: the first ``n`` held-out clips against the training clips (a floor),
    and the first ``n`` training clips against the held-out clips (scored as the samples are)."""
    train, heldout = moving_digits(), moving_digits("heldout")
    n = min(n, len(heldout))
    first = torch.arange(n)
    return {"heldout-vs-train": score(heldout.to_unit(heldout.get(first)).numpy(), train, reference_scores=False),
            "train-vs-heldout": score(train.to_unit(train.get(first)).numpy(), heldout, reference_scores=False),
            "n": n, "train_clips": len(train), "heldout_clips": len(heldout)}


def _f(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _at(pred: dict, key: str) -> list[float]:
    return [pred[key][pred["horizon"].index(h)] for h in HORIZONS]


def _pred_cell(pred: dict | None, kind: str = "ssim", fmt: str = ".3f") -> str:
    if not pred:
        return "n/a (no frame input)"
    ours, copy_last = _at(pred, kind), _at(pred, f"copy_last_{kind}")
    return f"{'/'.join(format(v, fmt) for v in ours)} ({'/'.join(format(v, fmt) for v in copy_last)})"


def _params(r: dict) -> str:
    ae = f" + AE {r['autoencoder_params'] / 1e6:.2f}M" if r.get("autoencoder_params") else ""
    return f"{r['params'] / 1e6:.2f}M{ae}"


def read(results: dict) -> str:
    """The issue's goals, met or not, from the numbers."""
    meta = results.get("_meta", {})
    real = meta.get("real", {})
    ours = [n for n in UNDIFFUSE if n in results]
    peer = results.get(PEER)
    parts = []
    if meta.get("quick"):
        parts.append("Quick run (seconds of training, a handful of samples): the verdicts only show that the "
                     "harness works.")

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    if ours:
        idt = "; ".join(f"{n} {results[n]['identity']:.3f} ({verdict(results[n]['identity'] >= GOAL_IDENTITY)})"
                        for n in ours)
        ref = results[ours[0]].get("reference") or {}  # the held-out clips' own scores, the same for every recipe
        ceiling = ""
        if ref:
            ceiling = (f"; the same reader gives the {real.get('heldout_clips', 1000)} real held-out clips "
                       f"{ref['identity']:.3f} (tolerant {ref['identity_tolerant']:.3f}), what real clips reach"
                       + (", itself below the goal: with this reader real clips miss it too"
                          if ref["identity"] < GOAL_IDENTITY else ""))
        parts.append(f"Identity >= {GOAL_IDENTITY:g} (strict): {idt}{ceiling}.")
    parts.append(f"Per-frame fd within {GOAL_FD_VS_IMAGE:g}x of single-image generation at 32 x 32: not measured "
                 "by this harness (it runs no image recipe).")
    for n in ours:
        p = results[n].get("prediction")
        if p and 4 in p["horizon"]:
            s, c = _at(p, "ssim")[1], _at(p, "copy_last_ssim")[1]
            parts.append(f"{n}: prediction SSIM at horizon 4 {s:.3f} against copy-last {c:.3f}: "
                         f"{'above' if s > c else 'not above'} ({verdict(s > c)}).")
    if peer and ours:
        fd = "; ".join(f"{n} {results[n]['fd']:.2f} = {results[n]['fd'] / peer['fd']:.2f}x diffusers' "
                       f"{peer['fd']:.2f} ({verdict(results[n]['fd'] <= GOAL_FD_VS_PEER * peer['fd'])})" for n in ours)
        parts.append(f"Per-frame fd at most {GOAL_FD_VS_PEER:g}x the diffusers loop's at equal time: {fd}.")
    elif ours:
        parts.append("Per-frame fd against the diffusers loop: not measured (no diffusers-video row).")
    return "**Read:** " + " ".join(parts)


def markdown(results: dict) -> str:
    meta = results.get("_meta", {})
    m = meta.get("machine", {})
    real = meta.get("real", {})
    n = real.get("n", meta.get("samples", "?"))
    lines = [START, "## Video: moving digits, undiffuse's video recipes against diffusers' UNet3DConditionModel", "",
             f"`{meta.get('command', '')}` on {m.get('cpu', '?')} (nproc {m.get('nproc', '?')}; torch "
             f"{m.get('torch', '?')}, diffusers {m.get('diffusers', '?')}; {m.get('date', '')}"
             + (", quick mode: far too short for conclusions" if meta.get("quick") else "") + "). "
             f"Each recipe trains {meta.get('budget', 0):g} s on {meta.get('threads', '?')} thread(s), two at a time "
             f"({pairing(results)}); "
             f"{meta.get('samples', '?')} samples each, scored by `metrics.video.evaluate_video` against the "
             f"{real.get('heldout_clips', 1000)} `moving-digits:heldout` clips (16 frames, 32 x 32); prediction: "
             f"first {meta.get('predict_clips', '?')} held-out clips, {CONTEXT} frames given, {FUTURE} predicted. "
             "Protocol: `benchmarks/video.py`.", "",
             ("| recipe | params | steps | per-frame fd | clip_fd | identity (tolerant) | motion (px) | samples/s | "
              "pred SSIM h1/h4/h8 (copy-last) |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, label in (("heldout-vs-train", f"real: {n} held-out clips vs the training clips"),
                       ("train-vs-heldout", f"real: {n} training clips vs the held-out clips (as samples are scored)")):
        r = real.get(key)
        if r:
            lines.append(f"| {label} | | | {_f(r['fd'])} | {_f(r['clip_fd'])} | {_f(r['identity'])} "
                         f"({_f(r['identity_tolerant'])}) | {_f(r['motion'], '.2f')} | | |")
    for name in ORDER:
        r = results.get(name)
        if r:
            lines.append(f"| {name} | {_params(r)} | {r['steps']} | {_f(r['fd'])} | {_f(r['clip_fd'])} | "
                         f"{_f(r['identity'])} ({_f(r['identity_tolerant'])}) | {_f(r['motion'], '.2f')} | "
                         f"{r['samples_per_s']:.3g} | {_pred_cell(r['prediction'])} |")
    preds = [name for name in ORDER if results.get(name, {}).get("prediction")]
    if preds:
        lines += ["", "Prediction, per horizon 1/4/8 (copy-last-frame baseline in brackets):", "",
                  "| recipe | PSNR dB | SSIM |", "| --- | --- | --- |"]
        lines += [f"| {name} | {_pred_cell(results[name]['prediction'], 'psnr', '.2f')} | "
                  f"{_pred_cell(results[name]['prediction'])} |" for name in preds]
    lines += ["", read(results), "", notes(results), END]
    return "\n".join(lines) + "\n"


def pairing(results: dict) -> str:
    """Which recipes trained side by side, from the saved rows."""
    done, groups = set(), []
    for name in ORDER:
        if name in results and name not in done:
            group = [name, *[m for m in results[name].get("beside", []) if m in results]]
            done.update(group)
            groups.append(" beside ".join(group) if len(group) > 1 else f"{name} alone")
    return ", then ".join(groups)


def notes(results: dict) -> str:
    """How each row was made, from the saved numbers."""
    out = []
    for name in ORDER:
        r = results.get(name)
        if not r:
            continue
        if name == PEER:
            out.append(f"- **{name}**: UNet3DConditionModel (32, 32, 48), {r['params'] / 1e6:.3f}M parameters, "
                       f"batch {r['batch']}, AdamW lr {r['lr']:g}, cosine over {r['horizon']} steps with "
                       f"{r['warmup']} warm-up ({r['probe_step_seconds']:.1f} s per step measured first), EMA; "
                       f"{r['steps']} step(s) in {r['train_seconds']:.0f} s; zero text embedding (unconditional); "
                       f"sampled with {r['sampler']}. No frame input, so no prediction.")
        else:
            ae = (f"; autoencoder {r['autoencoder_params'] / 1e6:.2f}M parameters, {r['autoencoder_seconds']:.0f} s "
                  "of the budget") if r.get("autoencoder_params") else ""
            out.append(f"- **{name}**: `{r['commands'][0]}` (preset {r['preset']}, "
                       f"{r['params'] / 1e6:.3f}M parameters{ae}); {r['steps']} steps, batch {r['batch']}; sampled "
                       f"with {r['sampler']} (samples/s: the whole `sample` command).")
    loads = "; ".join(f"{name} {results[name]['load_avg_start']}/{results[name]['load_avg_end']}"
                      for name in ORDER if name in results)
    return "\n".join(out + ([f"- 1-minute load average at each child's start/end: {loads}."] if loads else []))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, help="training seconds per recipe (default 1200, quick 20)")
    p.add_argument("--samples", type=int, help="clips sampled per recipe (default 200, quick 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per recipe (default 1)")
    p.add_argument("--only", nargs="*", choices=ORDER, help="run only these recipes")
    p.add_argument("--out", help="runs, samples and results.json (default runs/bench_video, quick "
                   "runs/bench_video_quick)")
    p.add_argument("--quick", action="store_true", help="plumbing check: 20 s budgets, 8 samples, 8 prediction clips")
    p.add_argument("--predict-clips", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    rerun_arguments(p)
    args = p.parse_args()
    args.budget = args.budget or (20.0 if args.quick else 1200.0)
    args.samples = args.samples or (8 if args.quick else 200)
    args.predict_clips = args.predict_clips or (8 if args.quick else PREDICT_CLIPS)
    args.out = args.out or ("runs/bench_video_quick" if args.quick else "runs/bench_video")
    if args.samples < 2:
        p.error(f"--samples must be at least 2 (a Frechet distance needs two), got {args.samples}")
    if args.child:
        return child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = load_results(path)
    if not args.render:
        todo = [n for n in ORDER if n in (args.only or ORDER) and (args.again or n not in results)]
        for i in range(0, len(todo), 2):  # two at a time, in ORDER
            names = todo[i:i + 2]
            log(f"== {' and '.join(names)}")
            procs = {n: subprocess.Popen([sys.executable, __file__, "--child", n, "--budget", str(args.budget),
                                          "--samples", str(args.samples), "--threads", str(args.threads),
                                          "--predict-clips", str(args.predict_clips), "--out", str(out)],
                                         stdout=subprocess.PIPE, text=True,
                                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                     for n in names}
            for n, proc in procs.items():
                stdout, _ = proc.communicate()
                if proc.returncode != 0:
                    log(f"{n} failed with exit {proc.returncode}")
                    continue
                results[n] = {**last_json(stdout), "beside": [m for m in names if m != n]}
                save_results(path, results)
        meta = results.get("_meta", {})
        if args.again or meta.get("real", {}).get("n") != min(args.samples, 1000):
            torch.set_num_threads(args.threads)
            log(f"real rows: {args.samples} held-out clips vs the training clips, and back")
            meta["real"] = real_rows(args.samples)
        results["_meta"] = {**meta, "command": command(), "machine": machine(), "budget": args.budget,
                            "threads": args.threads, "samples": args.samples, "predict_clips": args.predict_clips,
                            "quick": args.quick}
        save_results(path, results)
    return finish(args, results, markdown)


if __name__ == "__main__":
    sys.exit(main())
