"""``undiffuse sample --diffusers FOLDER``: sample a diffusers ``UNet2DModel`` (saved by
``save_pretrained`` with its scheduler) with any undiffuse sampler, written like any run's
samples (PNG grid and images with their parameters, or ``--format npz``).

Steps are placed as the folder's scheduler places its inference timesteps unless
``--schedule`` names an undiffuse schedule. Sample ``i`` starts from the standard-normal draw
of seed ``seed + i``, so a sample does not depend on the batch it was computed in.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from undiffuse.core.noise import noise as make_noise
from undiffuse.core.schedules import get_sigmas
from undiffuse.inference import generate as gen
from undiffuse.inference.interop import load_diffusers, sample_diffusers
from undiffuse.utils import distributed as dist

# sample options that need an undiffuse run (its conditioning, its recommended settings, its checksum)
RUN_ONLY = {"class_": "--class", "prompt": "--prompt", "negative_prompt": "--negative-prompt",
            "autoguide": "--autoguide", "classifier": "--classifier", "calibration": "--calibration",
            "guidance_interval": "--guidance-interval", "content_filter": "--content-filter"}


def sample(args, sub) -> int:
    given = [flag for name, flag in RUN_ONLY.items() if getattr(args, name, None) is not None]
    if args.guidance != 1.0:
        given.append("--guidance")
    if given:
        sub.error(f"{', '.join(given)} cannot be used with --diffusers (an unconditional diffusers UNet2DModel); "
                  "they need an undiffuse run (--checkpoint)")
    if dist.env_world().distributed:
        sub.error("--diffusers samples in one process; run it without torchrun")
    sampler, steps = args.sampler or "ddim", args.steps or 50
    out = args.out or ("samples.npz" if args.format == "npz" else "samples")
    try:
        model = load_diffusers(args.diffusers, device=args.device)
    except (FileNotFoundError, OSError, ValueError) as e:
        sub.error(f"--diffusers: {e}")
    except ImportError as e:
        print(f"undiffuse sample: error: {e}", file=sys.stderr)
        return 1
    sigmas = None
    if args.schedule is not None:
        try:
            sigmas = get_sigmas(args.schedule, steps, process=model.denoiser.process)
        except ValueError as e:
            sub.error(f"--schedule: {e}")
    parts = []
    for start in range(0, args.num, args.batch_size):
        seeds = list(range(args.seed + start, args.seed + min(start + args.batch_size, args.num)))
        z = make_noise((len(seeds), *model.shape), seed=seeds, device=args.device)
        parts.append(sample_diffusers(model, z, sampler=sampler, steps=steps, seed=seeds, sigmas=sigmas).float().cpu())
    x = gen.to_unit(torch.cat(parts))
    params = {"diffusers": os.path.abspath(args.diffusers), "sampler": sampler, "steps": steps,
              "schedule": args.schedule or f"scheduler ({model.scheduler_config.get('_class_name', '?')} timesteps)"}
    if args.format == "npz":
        gen.save_npz(out, x.numpy().astype(np.float32), {**params, "seed": args.seed, "count": len(x)})
        print(f"wrote {out} ({len(x)} samples)", file=sys.stderr)
    else:
        gen.save_images(out, x, params, seed=args.seed, watermark=not args.no_watermark)
        print(f"wrote {out}/grid.png and {len(x)} images in {out}/", file=sys.stderr)
    return 0
