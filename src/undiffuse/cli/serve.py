"""``undiffuse serve`` and ``undiffuse verify``: the command-line side of serving and provenance.

``verify`` exit status: 0 the image carries undiffuse's provenance record or its invisible
watermark (and they agree), 1 it is an image with neither, 2 usage errors (no such file, not
an image), 3 both are present but the mark's payload is not the record's model checksum
(the metadata was changed or copied from another image).
"""
from __future__ import annotations

import json
import logging
import os
import sys

from undiffuse.io import provenance as prov
from undiffuse.serve import TOKEN_ENV, Limits, is_loopback, load_filter, run_server
from undiffuse.utils.acceleration import device_option

COMMANDS = ("serve", "verify")


def add_parsers(sub, positive_int) -> None:
    d = Limits()
    s = sub.add_parser("serve", help="serve trained runs over HTTP (API and web page)",
                       description="Serve every run found in DIR (each sub-folder a run, named by its folder) on "
                                   "an HTTP API with request batching, jobs with progress, and a web page at /.")
    s.add_argument("--models", required=True, metavar="DIR", help="folder whose sub-folders are trained runs")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; any other address "
                   f"needs --token or ${TOKEN_ENV})")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    s.add_argument("--token", help=f"bearer token required by /v1/* (default: ${TOKEN_ENV} if set)")
    s.add_argument("--max-count", type=positive_int, default=d.max_count, help=f"images per request (default: "
                   f"{d.max_count})")
    s.add_argument("--max-steps", type=positive_int, default=d.max_steps, help=f"steps per request (default: "
                   f"{d.max_steps})")
    s.add_argument("--max-image-size", type=positive_int, default=d.max_image_size,
                   help=f"largest image side a served model may have (default: {d.max_image_size})")
    s.add_argument("--max-body", type=positive_int, default=d.max_body, help=f"request body bytes (default: "
                   f"{d.max_body})")
    s.add_argument("--max-queue", type=positive_int, default=d.max_queue, help=f"requests waiting or running "
                   f"(default: {d.max_queue})")
    s.add_argument("--max-batch", type=positive_int, default=64, help="images per network batch (default: 64)")
    s.add_argument("--batch-window", type=float, default=20.0, metavar="MS", help="milliseconds a request waits "
                   "for compatible company before its batch starts (default: 20)")
    s.add_argument("--content-filter", metavar="MODULE:CALLABLE", help="called as fn(output, request) for every "
                   "output; returning False or a reason string refuses it (never returned, logged)")
    s.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark in served "
                   "PNGs (the provenance metadata is still written)")
    s.add_argument("--device", type=device_option, default="cpu", help="where the models run: cpu (default), "
                   "cuda, cuda:1, ...")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))

    v = sub.add_parser("verify", help="report an image's watermark, generation metadata and provenance",
                       description="Report whether IMAGE carries undiffuse's invisible watermark (score against "
                                   "the threshold for a 1e-4 false-positive rate, and the payload: the first 8 hex "
                                   "digits of the model's weights SHA-256), the 'parameters' text and the JSON "
                                   "provenance record, and which model they name. The watermark key is "
                                   "$UNDIFFUSE_WATERMARK_KEY when set, else the project's public key. Exit status "
                                   "0: record or mark present (and agreeing); 1: neither; 2: not a readable image; "
                                   "3: the mark names another model than the record.")
    v.add_argument("image", metavar="IMAGE")


def run(args, sub) -> int:
    return {"serve": _serve, "verify": _verify}[args.command](args, sub)


def _serve(args, sub) -> int:
    if not os.path.isdir(args.models):
        sub.error(f"--models {args.models!r} is not a folder")
    if not 0 <= args.port <= 65535:
        sub.error(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.batch_window <= 10_000:
        sub.error(f"--batch-window must be in 0..10000 ms, got {args.batch_window}")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        sub.error(f"--host {args.host} is not a loopback address: give --token or set ${TOKEN_ENV}")
    content_filter = None
    if args.content_filter:
        try:
            content_filter = load_filter(args.content_filter)
        except ValueError as e:
            sub.error(f"--content-filter: {e}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = Limits(max_count=args.max_count, max_steps=args.max_steps, max_image_size=args.max_image_size,
                    max_body=args.max_body, max_queue=args.max_queue)
    run_server(args.models, host=args.host, port=args.port, token=token, log_level=args.log_level, limits=limits,
               content_filter=content_filter, window=args.batch_window / 1000, max_batch=args.max_batch,
               watermark=not args.no_watermark, device=args.device)
    return 0


def _verify(args, sub) -> int:
    if not os.path.isfile(args.image):
        sub.error(f"IMAGE {args.image!r} does not exist or is not a file")
    try:
        found = prov.read(args.image)
    except prov.NotAnImage as e:
        sub.error(str(e))
    rec = found["provenance"]
    mark = prov.read_watermark(args.image, rec)
    report = {"image": args.image, "watermark": mark.get("detected", False),
              "parameters": found["parameters"] is not None, "provenance": rec is not None,
              "model": rec.get("model") if rec else None, "model_sha256": rec.get("model_sha256") if rec else None,
              "mark": mark, "problems": found["problems"], "record": rec}
    print(json.dumps(report, indent=1))
    if mark.get("detected") and mark.get("payload_matches") is False:
        print(f"undiffuse verify: {args.image}: the watermark's payload {mark['payload_hex']} is not the record's "
              f"model checksum {rec['model_sha256'][:8]}...", file=sys.stderr)
        return 3
    if rec is None and not mark.get("detected"):
        print(f"undiffuse verify: {args.image} carries no undiffuse watermark and no valid undiffuse provenance record"
              + (f" ({'; '.join(found['problems'])})" if found["problems"] else ""), file=sys.stderr)
        return 1
    return 0
