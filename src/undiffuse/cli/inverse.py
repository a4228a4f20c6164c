"""``undiffuse inpaint | img2img | upscale | restore``: a trained run as a prior for images, and
(inpaint, img2img) for sound: ``--audio FILE`` with ``--gap START:END`` in seconds.

Inputs (``--image``, ``--mask``) are image files (PNG, JPEG, WebP), ``.npy``/``.npz`` arrays
with values in [0, 1] (an ``.npz`` as ``sample --format npz`` writes it), image folders or
built-in dataset names; ``--index`` picks items. Every output PNG carries its parameters in
its metadata (``parameters`` and a JSON ``undiffuse`` chunk), like ``sample``.
Masks follow the common convention: white (1) = fill, black (0) = keep.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from undiffuse.cli.options import add_device, check_folder, load_run, positive_int
from undiffuse.core import schedules
from undiffuse.core.noise import SeededNoise
from undiffuse.data.base import DataError
from undiffuse.inference import audio_edit
from undiffuse.inference import generate as gen
from undiffuse.io.writers import write_samples
from undiffuse.metrics.evaluate import load_set
from undiffuse.steering import degradations, inverse
from undiffuse.steering.conditioning import upsample_condition

_MASK_NAMES = ("top", "bottom", "left", "right", "center")
_DEGRADATIONS = ("blur", "noise", "downsample", "mask")
# Latent runs: these work in the autoencoder's latent space (upscale and restore would need guidance
# through the decoder, not done)
_LATENT_COMMANDS = ("inpaint", "img2img")


def add_parser(subparsers) -> None:
    def common(p, sampler_default: str, steps_default: int):
        p.add_argument("--checkpoint", required=True, help="run folder (latest checkpoint) or checkpoint folder")
        p.add_argument("--image", help="image file, .npy/.npz in [0, 1], image folder or built-in dataset name "
                       "(image runs; required there)")
        p.add_argument("--index", help="comma list of items of --image to use (default: all)")
        p.add_argument("--num", type=positive_int, default=1, help="results per input image (default: 1)")
        p.add_argument("--seed", type=int, default=0, help="result i uses seed + i (default: 0)")
        p.add_argument("--sampler", default=sampler_default, help=f"sampler (default: {sampler_default}; inpaint: "
                       "its step, ancestral or euler)")
        p.add_argument("--steps", type=positive_int, default=steps_default, help=f"steps (default: {steps_default})")
        p.add_argument("--schedule", default="karras")
        p.add_argument("--class", dest="class_", metavar="CLASS", help="class for a class-conditional run "
                       "(default: the null class)")
        p.add_argument("--prompt", help="prompt for a text-conditioned run (default: empty)")
        p.add_argument("--out", default=None, help="output folder (default: the command's name)")
        p.add_argument("--weights", choices=("ema", "model"), default="ema")
        add_device(p)

    i = subparsers.add_parser("inpaint", help="fill the masked region of images (RePaint)",
                              description="Fill the region where --mask is white with RePaint resampling (Lugmayr "
                              "et al. 2022): the kept pixels stay exactly as given.")
    common(i, "ancestral", 50)
    i.add_argument("--mask", help=f"image runs (required there): mask image (white = fill, black = keep; same size "
                   f"as the image) or one of {', '.join(_MASK_NAMES)} (fill that half, or the centre square)")
    i.add_argument("--audio", metavar="FILE", help="sound runs: the clip (WAV, FLAC or OGG; resampled to the run's "
                   "rate, at most the run's clip length)")
    i.add_argument("--gap", metavar="START:END", help="sound runs: the stretch to fill, in seconds (e.g. 0.3:0.5); "
                   "the rest of the clip is kept (joined by 10 ms cross-fades)")
    i.add_argument("--jump-length", type=positive_int, default=5, help="steps per resampling block (default: 5)")
    i.add_argument("--jump-count", type=int, default=4, help="extra walks over each block (default: 4; 0 = plain "
                   "replacement; cost = (1 + count) x steps evaluations)")

    m = subparsers.add_parser("img2img", help="SDEdit: re-imagine images with a strength",
                              description="Noise each image part of the way (--strength) and denoise it (Meng et al. "
                              "2022).")
    common(m, "heun", 20)
    m.add_argument("--strength", type=float, required=True, help="in (0, 1]: 1 ignores the image, small values "
                   "keep it; about round(steps x strength) steps run")
    m.add_argument("--audio", metavar="FILE", help="sound runs: the clip to vary (WAV, FLAC or OGG), instead of "
                   "--image")

    u = subparsers.add_parser("upscale", help="super-resolution: with a model trained on low-resolution copies "
                              "(--conditioning lowres), or zero-shot with any run",
                              description="Super-resolve low-resolution images. A run trained with --conditioning "
                              "lowres is sampled with the image as its condition (SR3); any other run is used "
                              "zero-shot as a prior with posterior guidance through average pooling.")
    common(u, "heun", 18)
    u.add_argument("--factor", type=positive_int, help="up-sampling factor (default: the run's, or model size / "
                   "image size)")
    u.add_argument("--noise-std", type=float, default=0.0, help="zero-shot: noise std of the low-res image in "
                   "model units (default: 0)")

    r = subparsers.add_parser("restore", help="posterior sampling for a degraded image (blur, noise, downsample, "
                              "mask)", description="Sample images x with degradation(x) + noise = the given image, "
                              "from the run as a prior (posterior guidance, any sampler).")
    common(r, "heun", 30)
    r.add_argument("--degradation", required=True, choices=_DEGRADATIONS)
    r.add_argument("--noise-std", type=float, default=0.05, help="measurement noise std in model units "
                   "(default: 0.05)")
    r.add_argument("--blur-sigma", type=float, default=1.0, help="blur: Gaussian std in pixels (default: 1)")
    r.add_argument("--factor", type=positive_int, default=2, help="downsample: factor (default: 2)")
    r.add_argument("--mask", help="mask: white = unknown, as for inpaint (or a name: "
                   f"{', '.join(_MASK_NAMES)})")
    r.add_argument("--guidance-scale", type=float, default=1.0, help="weight of the measurement (default: 1)")


def run(args, parser) -> int:
    usage = parser.error
    loaded = load_run(parser, args.checkpoint, weights=args.weights, device=args.device)
    if loaded.kind == "audio":
        return _sound(args, parser, loaded)
    if loaded.kind != "image":
        usage(f"{args.command} needs an image model; {args.checkpoint!r} models vectors")
    if getattr(args, "audio", None) or getattr(args, "gap", None):
        usage(f"--audio and --gap are for sound runs; {args.checkpoint!r} makes images (use --image)")
    if args.image is None:
        usage("--image is required for an image run")
    if args.command == "inpaint" and args.mask is None:
        usage("--mask is required to inpaint an image")
    if loaded.decoder is not None and args.command not in _LATENT_COMMANDS:
        usage(f"{args.command} works on pixel-space runs; {args.checkpoint!r} is a latent diffusion run "
              f"(train --latent): on latent runs use {' or '.join(_LATENT_COMMANDS)}")
    images = _match_channels(_load_images(args, usage), loaded.image_shape[0])
    out = args.out or args.command
    check_folder(parser, out)
    n_in = len(images)
    x_in = images.repeat_interleave(args.num, 0)  # input j's results are rows j*num .. j*num+num-1
    seeds = [args.seed + i for i in range(len(x_in))]
    extra, steer = _condition(args, loaded, len(x_in), usage)
    params = {"command": args.command, "checkpoint": os.path.abspath(loaded.checkpoint), "step": loaded.step,
              "sampler": args.sampler, "steps": args.steps, "schedule": args.schedule, "image": args.image, **steer}
    try:
        y, params = {"inpaint": _inpaint, "img2img": _img2img, "upscale": _upscale, "restore": _restore}[
            args.command](args, loaded, x_in, seeds, extra, params, usage)
    except ValueError as e:
        usage(str(e))
    _save_results(out, x_in, y, params, seeds, n_in, args.num)
    print(f"wrote {out}/grid.png (inputs in the first column) and {len(y)} images in {out}/", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- inputs

def _load_images(args, usage) -> torch.Tensor:
    """(N, C, H, W) in model space [-1, 1]."""
    arr = _read(args.image, "--image", usage)
    if args.index:
        try:
            idx = [int(v) for v in args.index.split(",")]
        except ValueError:
            usage(f"--index {args.index!r}: expected a comma list of integers")
        bad = [i for i in idx if not 0 <= i < len(arr)]
        if bad:
            usage(f"--index {bad[0]} out of range: --image has {len(arr)} items (0..{len(arr) - 1})")
        arr = arr[idx]
    return torch.from_numpy(arr).float() * 2 - 1


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey images for an RGB model are repeated; RGB images for a grey model are averaged."""
    if x.shape[1] == channels:
        return x
    if channels == 1:
        return x.mean(1, keepdim=True)
    return x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x


def _read(spec: str, what: str, usage) -> np.ndarray:
    if os.path.isfile(spec) and not spec.endswith((".npy", ".npz")):
        try:
            with Image.open(spec) as img:
                img.load()
                mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16") else "RGB"
                a = np.asarray(img.convert(mode), np.float64) / 255.0
        except OSError as e:
            usage(f"{what} {spec!r}: not a readable image ({e})")
        return (a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None])
    try:
        arr, _ = load_set(spec, what=what)
    except ValueError as e:
        usage(str(e))
    if arr.ndim != 4:
        usage(f"{what} {spec!r} holds vectors, not images")
    return arr


def _check_shape(x: torch.Tensor, shape: tuple, what: str, usage) -> None:
    if tuple(x.shape[1:]) != tuple(shape):
        usage(f"{what} has images of shape {tuple(x.shape[1:])} (C, H, W) but the model makes {tuple(shape)}")


def _mask(spec: str, shape: tuple, usage) -> torch.Tensor:
    """1 = keep (observed), 0 = fill, shape (1, 1, H, W) or (N, 1, H, W)."""
    _, h, w = shape
    if spec in _MASK_NAMES:
        fill = torch.zeros(1, 1, h, w, dtype=torch.bool)
        sl = {"top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None)),
              "left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
              "center": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))}[spec]
        fill[0, 0][sl] = True
        return (~fill).float()
    m = _read(spec, "--mask", usage)
    if m.shape[-2:] != (h, w):
        usage(f"--mask has size {m.shape[-2]}x{m.shape[-1]} but the images are {h}x{w}; they must match")
    m = m.max(1, keepdims=True)  # any channel white = fill
    if not np.isin(np.round(m * 255), (0, 255)).all():
        usage("--mask must be binary: black (0) = keep and white (255) = fill; found grey values")
    if m.min() == m.max():
        usage("--mask is " + ("all white: nothing is kept (use sample instead)" if m.max() > 0
                              else "all black: nothing to fill"))
    return torch.from_numpy(1 - m).float()


def _condition(args, run, n: int, usage) -> tuple[dict, dict]:
    kind = run.conditioning
    if args.class_ is not None and kind != "class":
        usage(f"--class needs a class-conditional run; {args.checkpoint!r} is conditioned on {kind!r}")
    if args.prompt is not None and kind != "text":
        usage(f"--prompt needs a text-conditioned run; {args.checkpoint!r} is conditioned on {kind!r}")
    if kind == "lowres" and args.command != "upscale":
        usage(f"{args.checkpoint!r} is a super-resolution model: use `undiffuse upscale`")
    try:
        if kind == "class":
            labels = gen.class_labels(run, args.class_, n) if args.class_ is not None else torch.full((n,), -1)
            return {"class_labels": labels}, ({"class": args.class_} if args.class_ is not None else {})
        if kind == "text":
            return gen.prompt_condition(run, args.prompt or ""), {"prompt": args.prompt or ""}
    except ValueError as e:
        usage(str(e))
    return {}, {}


# ----------------------------------------------------------------------------- commands

def _sigmas(args, run):
    s = run.config.sample
    return schedules.get_sigmas(args.schedule, args.steps, sigma_min=s.sigma_min or run.denoiser.sigma_min,
                                sigma_max=s.sigma_max or run.denoiser.sigma_max, process=run.denoiser.process)


def _inpaint(args, run, x, seeds, extra, params, usage):
    _check_shape(x, run.image_shape, "--image", usage)
    if args.sampler not in inverse.INPAINT_STEPS:
        usage(f"--sampler {args.sampler!r}: inpaint steps with one of {', '.join(inverse.INPAINT_STEPS)}")
    if args.jump_count < 0:
        usage(f"--jump-count must be >= 0, got {args.jump_count}")
    mask = _mask(args.mask, run.image_shape, usage).expand(len(x), *run.image_shape)
    draws = args.steps * (1 + args.jump_count)  # RePaint walks each block 1 + jump_count times
    options = dict(generator=SeededNoise(seeds, draws=draws), jump_length=args.jump_length,
                   jump_count=args.jump_count, step=args.sampler, extra=extra)
    params = {**params, "mask": args.mask, "jump_length": args.jump_length, "jump_count": args.jump_count}
    if run.decoder is None:
        return inverse.inpaint(run.denoiser, x, mask, _sigmas(args, run), **options), params
    # latent run: RePaint on the latents, then the kept pixels pasted back exactly
    codec = run.decoder
    keep = _latent_keep(mask, run.shape, usage)
    known = codec.encode(x * mask)  # the region to fill does not reach the encoder (it sees 0 there)
    z = inverse.inpaint(run.denoiser, known, keep, _sigmas(args, run), **options)
    return mask * x + (1 - mask) * codec.decode(z).to(x.device), {**params, "latent": True}


def _latent_keep(mask: torch.Tensor, latent_shape: tuple, usage) -> torch.Tensor:
    """A pixel mask (1 = keep) as a latent mask: a latent cell is kept only when every pixel it
    covers is kept, so the filled region grows to whole cells."""
    factor = mask.shape[-1] // latent_shape[-1]
    keep = -F.max_pool2d(-mask[:, :1], factor)  # minimum over each cell
    if not keep.bool().any():
        usage(f"--mask {mask.shape[-2]}x{mask.shape[-1]}: no latent cell ({factor}x{factor} pixels) is wholly kept, "
              f"so nothing is left to condition on in this latent run; keep larger regions")
    return keep.expand(-1, latent_shape[0], -1, -1)


def _img2img(args, run, x, seeds, extra, params, usage):
    _check_shape(x, run.image_shape, "--image", usage)
    s = run.config.sample
    codec = run.decoder  # latent run: SDEdit on the image's latents, then decoded
    start = codec.encode(x) if codec is not None else x
    y = inverse.sdedit(run.denoiser, start, args.strength, sampler=args.sampler, steps=args.steps,
                       schedule=args.schedule, sigma_min=s.sigma_min, sigma_max=s.sigma_max, seed=seeds, extra=extra)
    if codec is None:
        return y, {**params, "strength": args.strength}
    return codec.decode(y).to(x.device), {**params, "strength": args.strength, "latent": True}


def _upscale(args, run, x, seeds, extra, params, usage):
    c, h, w = run.shape
    if x.shape[1] != c:
        usage(f"--image has {x.shape[1]} channels but the model makes {c}")
    factor = args.factor
    if run.conditioning == "lowres":
        factor = factor or run.config.conditioning.factor
        if factor != run.config.conditioning.factor:
            usage(f"--factor {factor}: this model was trained for factor {run.config.conditioning.factor}")
    elif factor is None:
        factor = h // x.shape[2] if h % x.shape[2] == 0 else 0
    if not factor or (x.shape[2] * factor, x.shape[3] * factor) != (h, w):
        usage(f"--image is {x.shape[2]}x{x.shape[3]}; with factor {factor} it does not make the model's {h}x{w}")
    if run.conditioning == "lowres":
        cond = {"cond_image": upsample_condition(x, factor)}
        y = gen.generate(run, len(x), seed=seeds[0], sampler=args.sampler, steps=args.steps, schedule=args.schedule,
                         condition=cond)
        return y, {**params, "factor": factor, "method": "conditioned (SR3)"}
    s = run.config.sample
    y = inverse.upscale(run.denoiser, x, factor, noise_std=args.noise_std, sampler=args.sampler, steps=args.steps,
                        schedule=args.schedule, sigma_min=s.sigma_min, sigma_max=s.sigma_max, seed=seeds, extra=extra)
    return y, {**params, "factor": factor, "method": "zero-shot posterior guidance"}


def _restore(args, run, x, seeds, extra, params, usage):
    d = args.degradation
    if d == "downsample":
        c, h, w = run.shape
        if (x.shape[2] * args.factor, x.shape[3] * args.factor) != (h, w):
            usage(f"--image is {x.shape[2]}x{x.shape[3]}; with --factor {args.factor} it does not make the "
                  f"model's {h}x{w}")
        op = degradations.get("downsample", factor=args.factor, noise_std=args.noise_std)
    else:
        _check_shape(x, run.shape, "--image", usage)
        if d == "blur":
            op = degradations.get("blur", sigma_px=args.blur_sigma, noise_std=args.noise_std)
        elif d == "noise":
            op = degradations.get("noise", noise_std=args.noise_std)
        else:
            if not args.mask:
                usage("--degradation mask needs --mask")
            op = degradations.get("mask", mask=_mask(args.mask, run.shape, usage), noise_std=args.noise_std)
    s = run.config.sample
    y = inverse.restore(run.denoiser, x, op, sampler=args.sampler, steps=args.steps, schedule=args.schedule,
                        sigma_min=s.sigma_min, sigma_max=s.sigma_max, seed=seeds, scale=args.guidance_scale,
                        extra=extra)
    return y, {**params, "degradation": op.params(), "guidance_scale": args.guidance_scale}


def _sound(args, parser, run) -> int:
    """inpaint --audio FILE --gap START:END, and img2img --audio FILE, on a sound run."""
    usage = parser.error
    if args.command not in ("inpaint", "img2img"):
        usage(f"{args.command} works on images; on sound runs use inpaint --audio FILE --gap START:END or "
              f"img2img --audio FILE --strength S")
    if args.image is not None or getattr(args, "mask", None) is not None:
        usage(f"{args.checkpoint!r} makes sound: give the clip with --audio (and the stretch to fill with --gap), "
              f"not --image/--mask")
    if not args.audio:
        usage(f"--audio FILE is required: {args.checkpoint!r} makes sound")
    a = run.audio
    try:
        wave, duration = audio_edit.read_clip(args.audio, a)
        gap = audio_edit.parse_gap(args.gap, duration) if args.command == "inpaint" and args.gap else None
    except (DataError, ValueError) as e:
        usage(str(e))
    if args.command == "inpaint" and gap is None:
        usage("--gap START:END is required to inpaint sound (the stretch to fill, in seconds)")
    out = args.out or args.command
    check_folder(parser, out)
    x = audio_edit.to_model(wave, a).repeat(args.num, *[1] * (len(run.shape)))
    seeds = [args.seed + i for i in range(len(x))]
    extra, steer = _condition(args, run, len(x), usage)
    if run.expert is not None:  # a pair trained by `train --experts`
        steer.update(expert=run.expert["checkpoint"], expert_above=run.expert["above"], expert_sha256=run.expert["sha256"])
    params = {"command": args.command, "checkpoint": os.path.abspath(run.checkpoint), "step": run.step,
              "sampler": args.sampler, "steps": args.steps, "schedule": args.schedule, "audio": args.audio,
              "sample_rate": a["sample_rate"], **steer}
    if args.command == "inpaint":
        if args.sampler not in inverse.INPAINT_STEPS:
            usage(f"--sampler {args.sampler!r}: inpaint steps with one of {', '.join(inverse.INPAINT_STEPS)}")
        keep, keep_samples = audio_edit.gap_masks(a, gap)
        options = dict(generator=SeededNoise(seeds, draws=args.steps * (1 + args.jump_count)),
                       jump_length=args.jump_length, jump_count=args.jump_count, step=args.sampler, extra=extra)
        y = inverse.inpaint(run.denoiser, x, keep.expand(len(x), *run.shape), _sigmas(args, run), **options)
        waves = audio_edit.splice(wave, gen.to_sound(y, run), keep_samples, a["sample_rate"])
        params.update(gap=f"{gap[0]:g}:{gap[1]:g}", jump_length=args.jump_length, jump_count=args.jump_count)
    else:
        s = run.config.sample
        try:
            y = inverse.sdedit(run.denoiser, x, args.strength, sampler=args.sampler, steps=args.steps,
                               schedule=args.schedule, sigma_min=s.sigma_min, sigma_max=s.sigma_max, seed=seeds,
                               extra=extra)
        except ValueError as e:
            usage(str(e))
        waves = gen.to_sound(y, run)
        params["strength"] = args.strength
    write_samples(waves, out, format="wav", seed=args.seed, params=params, watermark=False,
                  sample_rate=a["sample_rate"])
    print(f"wrote {len(waves)} WAV files and {out}/spectrograms.png in {out}/", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- outputs

def _save_results(out: str, x_in: torch.Tensor, y: torch.Tensor, params: dict, seeds: list[int], n_in: int,
                  num: int):
    """The one place these commands write files: ``out/grid.png`` (each input, then its ``num``
    results, one row per input) and one PNG per result with its parameters, through the one
    output path (``io.writers.write_samples``; no watermark or provenance record: these are
    edits of the user's own images)."""
    os.makedirs(out, exist_ok=True)
    y01 = gen.to_unit(y.float())
    inputs = gen.to_unit(x_in.float())
    if inputs.shape[-2:] != y01.shape[-2:]:  # low-resolution inputs, shown at the output size
        inputs = F.interpolate(inputs, size=y01.shape[-2:], mode="nearest")
    rows = []
    for j in range(n_in):
        rows.append(inputs[j * num: j * num + 1])
        rows.append(y01[j * num: (j + 1) * num])
    u8 = gen.to_uint8(torch.cat(rows))
    meta = {"parameters": gen.parameters_text({**params, "seed": f"{seeds[0]}..{seeds[-1]}"}),
            "undiffuse": json.dumps({**params, "seed": seeds[0], "count": len(y)}, default=str)}
    gen.save_png(os.path.join(out, "grid.png"), gen.grid(u8, nrow=num + 1), text=meta, scale=4)
    write_samples(y01, out, seed=seeds[0], params=params, per_sample=[{"input": i // num} for i in range(len(y))],
                  watermark=False, grid=False)
