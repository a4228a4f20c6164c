"""``undiffuse verify IMAGE``: report an image's invisible watermark, its generation metadata and
its provenance record, and whether they agree.

Exit status: 0 the image carries undiffuse's provenance record or its invisible watermark
(and they agree), 1 it is an image with neither, 2 usage errors (no such file, not an
image), 3 both are present but the mark's payload is not the record's model checksum (the
metadata was changed or copied from another image).
"""
from __future__ import annotations

import json
import os
import sys

from undiffuse.io import provenance as prov


def add_parser(subparsers) -> None:
    v = subparsers.add_parser("verify", help="report an image's watermark, generation metadata and provenance",
                              description="Report whether IMAGE carries undiffuse's invisible watermark (score "
                              "against the threshold for a 1e-4 false-positive rate, and the payload: the first 8 hex "
                              "digits of the model's weights SHA-256), the 'parameters' text and the JSON provenance "
                              "record, and which model they name. The watermark key is $UNDIFFUSE_WATERMARK_KEY when "
                              "set, else the project's public key. Exit status 0: record or mark present (and "
                              "agreeing); 1: neither; 2: not a readable image; 3: the mark names another model than "
                              "the record.")
    v.add_argument("image", metavar="IMAGE")


def run(args, parser) -> int:
    if not os.path.isfile(args.image):
        parser.error(f"IMAGE {args.image!r} does not exist or is not a file")
    try:
        found = prov.read(args.image)
    except prov.NotAnImage as e:
        parser.error(str(e))
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
