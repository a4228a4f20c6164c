"""``undiffuse train-autoencoder``: the autoencoder of latent diffusion, a KL-regularised
convolutional autoencoder written as DIR/autoencoder.safetensors + DIR/autoencoder.json;
then ``undiffuse train --latent --autoencoder DIR``."""
from __future__ import annotations

import json

from undiffuse import data as _data
from undiffuse.cli.options import add_device, check_folder, duration, log, positive_int
from undiffuse.training.autoencoder import train_autoencoder


def add_parser(subparsers) -> None:
    a = subparsers.add_parser("train-autoencoder", help="train the autoencoder of latent diffusion",
                              description="Train a KL-regularised convolutional autoencoder on image data (10%% held "
                              "out for the reconstruction error) and write DIR/autoencoder.safetensors + "
                              "DIR/autoencoder.json (config, latent scale factor, shapes, reconstruction error, "
                              "weights checksum). Then: `undiffuse train --latent --autoencoder DIR --data NAME`.")
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
    add_device(a)


def run(args, parser) -> int:
    check_folder(parser, args.out)
    if args.kl_weight < 0:
        parser.error(f"--kl-weight must be >= 0, got {args.kl_weight}")
    try:
        dataset = _data.load(args.data)
    except _data.DataError as e:
        parser.error(f"--data: {e}")
    if dataset.kind != "image":
        parser.error(f"--data {args.data!r} holds vectors; an autoencoder needs images")
    net = {k: v for k, v in (("channels", args.channels), ("latent_channels", args.latent_channels)) if v}
    steps = args.max_steps if args.max_steps or args.time_budget else 2000
    try:
        codec = train_autoencoder(dataset, args.out, max_steps=steps, time_budget=args.time_budget,
                                  kl_weight=args.kl_weight, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                                  net_config=net, device=args.device, log=log)
    except ValueError as e:
        parser.error(str(e))
    m = codec.meta
    print(json.dumps({"autoencoder": args.out, "image_shape": m["image_shape"], "latent_shape": m["latent_shape"],
                      "scale_factor": m["scale_factor"], "reconstruction_mse": m["reconstruction_mse"],
                      "steps": m["training"]["steps"], "seconds": m["training"]["seconds"], "sha256": m["sha256"]}))
    return 0
