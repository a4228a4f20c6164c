"""Command line for latent diffusion: ``undiffuse train-autoencoder`` and the ``--latent
--autoencoder RUN`` options of ``undiffuse train`` (usage errors exit with status 2)."""
from __future__ import annotations

import json
import os
import sys

from undiffuse import data as _data
from undiffuse.inference.codec import AutoencoderError, LatentDataset, load_autoencoder
from undiffuse.io import checkpoint as ckpt
from undiffuse.training.autoencoder import train_autoencoder as train
from undiffuse.utils.acceleration import device_option


def add_parser(sub, positive_int, duration) -> None:
    a = sub.add_parser("train-autoencoder", help="train the autoencoder of latent diffusion",
                       description="Train a KL-regularised convolutional autoencoder on image data (10%% held out for "
                       "the reconstruction error) and write DIR/autoencoder.safetensors + DIR/autoencoder.json "
                       "(config, latent scale factor, shapes, reconstruction error, weights checksum). Then: "
                       "`undiffuse train --latent --autoencoder DIR --data NAME`.")
    a.add_argument("--data", default="mnist5k", help="images: a built-in name, an image folder or .npy/.npz "
                   "(default: mnist5k)")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--max-steps", type=positive_int, help="optimizer steps (default: 2000 unless --time-budget)")
    a.add_argument("--time-budget", type=duration, help="or stop after this much training time, e.g. 5m")
    a.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the mean KL term against the mean "
                   "squared reconstruction error (default: 1e-4)")
    a.add_argument("--batch-size", type=positive_int, default=32)
    a.add_argument("--lr", type=float, default=2e-3)
    a.add_argument("--channels", type=positive_int, help="width of the first level (default: 16)")
    a.add_argument("--latent-channels", type=positive_int, help="latent channels (default: 4)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", type=device_option, default="cpu", help="cpu (default), cuda, cuda:1, ...")


def train_autoencoder(args, sub) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        sub.error(f"--out {args.out!r} exists and is not a folder")
    if args.kl_weight < 0:
        sub.error(f"--kl-weight must be >= 0, got {args.kl_weight}")
    try:
        dataset = _data.load(args.data)
    except _data.DataError as e:
        sub.error(f"--data: {e}")
    if dataset.kind != "image":
        sub.error(f"--data {args.data!r} holds vectors; an autoencoder needs images")
    net = {k: v for k, v in (("channels", args.channels), ("latent_channels", args.latent_channels)) if v}
    steps = args.max_steps if args.max_steps or args.time_budget else 2000
    try:
        codec = train(dataset, args.out, max_steps=steps, time_budget=args.time_budget, kl_weight=args.kl_weight,
                      lr=args.lr, batch_size=args.batch_size, seed=args.seed, net_config=net, device=args.device,
                      log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        sub.error(str(e))
    m = codec.meta
    print(json.dumps({"autoencoder": args.out, "image_shape": m["image_shape"], "latent_shape": m["latent_shape"],
                      "scale_factor": m["scale_factor"], "reconstruction_mse": m["reconstruction_mse"],
                      "steps": m["training"]["steps"], "seconds": m["training"]["seconds"], "sha256": m["sha256"]}))
    return 0


def latent_options(args, sub, saved: dict | None) -> None:
    """Check ``--latent`` / ``--autoencoder``; a resumed latent run keeps its own autoencoder."""
    bad = [k for k, _ in getattr(args, "overrides", []) if k.startswith("latent.")]
    if bad:
        sub.error(f"--set {bad[0]}: the latent section is written by --latent --autoencoder RUN, not by --set")
    saved_ae = (saved or {}).get("autoencoder")
    if saved_ae and not args.latent and not args.autoencoder:
        args.latent, args.autoencoder = True, saved_ae
    if args.latent and not args.autoencoder:
        sub.error("--latent needs --autoencoder RUN (a folder from `undiffuse train-autoencoder`)")
    if args.autoencoder and not args.latent:
        sub.error(f"--autoencoder {args.autoencoder!r} is only used with --latent (latent diffusion); add --latent "
                  f"or drop --autoencoder")


def latent_data(args, sub, dataset, overrides: dict, saved: dict | None = None):
    """The dataset encoded by ``--autoencoder`` and the config overrides that record it; usage
    errors (not an autoencoder, images of another shape) exit 2."""
    try:
        codec = load_autoencoder(args.autoencoder)
    except AutoencoderError as e:
        sub.error(f"--autoencoder: {e}")
    if saved and saved.get("sha256") and saved["sha256"] != codec.sha256:
        sub.error(f"--autoencoder {args.autoencoder!r} is not the autoencoder the resumed run was trained with "
                  f"(weights SHA-256 {codec.sha256[:16]}..., the run recorded {saved['sha256'][:16]}...)")
    if dataset.kind != "image" or tuple(dataset.shape) != codec.image_shape:
        sub.error(f"--autoencoder {args.autoencoder!r} was trained on images of shape {codec.image_shape} "
                  f"({codec.meta.get('data', {}).get('name')}); --data {args.data!r} has items of shape "
                  f"{tuple(dataset.shape)}, so the latent shapes would not match (allowed: data of shape "
                  f"{codec.image_shape}, or train an autoencoder on this data)")
    try:
        latents = LatentDataset(dataset, codec)
    except ValueError as e:
        sub.error(f"--autoencoder: {e}")
    overrides.update({"latent.autoencoder": codec.path, "latent.sha256": codec.sha256,
                      "latent.scale_factor": codec.scale_factor})
    overrides.setdefault("diffusion.sigma_data", 1.0)  # scaled latents have unit std
    return latents


def resumed_latent(args) -> dict | None:
    """The latent settings saved in the run being resumed, if any."""
    path = args.out if args.resume == "auto" else args.resume
    if not path:
        return None
    try:
        return ckpt.load_checkpoint_config(path).get("latent")
    except (ckpt.CheckpointError, KeyError, OSError):
        return None
