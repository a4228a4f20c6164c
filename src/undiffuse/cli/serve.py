"""``undiffuse serve``: serve every run in a folder on an HTTP API with request batching, jobs
with progress, and a web page; the command-line side of ``undiffuse.serve``."""
from __future__ import annotations

import logging
import os

from undiffuse.cli.options import add_device, load_content_filter, positive_int
from undiffuse.serve import TOKEN_ENV, Limits, is_loopback, run_server


def add_parser(subparsers) -> None:
    d = Limits()
    s = subparsers.add_parser("serve", help="serve trained runs over HTTP (API and web page)",
                              description="Serve every run found in DIR (each sub-folder a run, named by its "
                              "folder) on an HTTP API with request batching, jobs with progress, and a web page at /.")
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
    add_device(s, help="where the models run: cpu (default), cuda, cuda:1, ...")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args, parser) -> int:
    if not os.path.isdir(args.models):
        parser.error(f"--models {args.models!r} is not a folder")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.batch_window <= 10_000:
        parser.error(f"--batch-window must be in 0..10000 ms, got {args.batch_window}")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        parser.error(f"--host {args.host} is not a loopback address: give --token or set ${TOKEN_ENV}")
    content_filter = load_content_filter(parser, args.content_filter)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = Limits(max_count=args.max_count, max_steps=args.max_steps, max_image_size=args.max_image_size,
                    max_body=args.max_body, max_queue=args.max_queue)
    run_server(args.models, host=args.host, port=args.port, token=token, log_level=args.log_level, limits=limits,
               content_filter=content_filter, window=args.batch_window / 1000, max_batch=args.max_batch,
               watermark=not args.no_watermark, device=args.device)
    return 0
