"""Request checking: the server's caps and the generation request every endpoint accepts.

A bad request becomes a ``RequestError`` (an HTTP 4xx status and a message naming the field,
its value and what is allowed) before anything is queued.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
from dataclasses import dataclass, field

import torch

from undiffuse import samplers
from undiffuse.inference import control as ctl
from undiffuse.inference.generate import class_labels


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Limits:
    max_count: int = 64          # images per request
    max_steps: int = 200         # sampler steps per request
    max_image_size: int = 256    # largest model image side (pixels) this server will sample
    max_body: int = 16_384       # request body, bytes
    max_queue: int = 256         # requests waiting or running, all models together
    max_seed: int = 2 ** 62      # seeds are 0 <= seed and seed + count <= max_seed
    max_guidance: float = 50.0   # |guidance| cap
    max_prompt: int = 1000       # characters


FORMATS = ("json", "png", "wav", "gif")
NATIVE_FORMAT = {"image": "png", "audio": "wav", "video": "gif"}  # the file format of each kind of run
FIELDS = ("model", "count", "sampler", "steps", "seed", "class", "prompt", "guidance", "format", "control_image",
          "control_scale")


@dataclass
class GenerateRequest:
    model: str
    count: int = 1
    sampler: str = ""            # resolved to the run's default when not given
    steps: int = 0               # resolved likewise
    seed: int = 0                # image i uses seed + i
    class_: object = None        # class name/index, a list of them, or "all"
    prompt: str | None = None
    guidance: float = 1.0
    format: str = "json"
    labels: list = field(default_factory=list)  # resolved class index per image (class runs)
    control: torch.Tensor | None = None  # control runs: the control image's maps (1, K, H, W)
    control_scale: float | None = None   # their scale (default: the run's)
    control_sha256: str = ""             # of the control image's bytes (recorded with the images)

    def key(self) -> tuple:
        """Requests with equal keys can share one network batch."""
        return (self.model, self.sampler, self.steps, self.guidance, bool(self.labels), self.prompt is not None,
                self.control is not None, self.control_scale)

    def params(self) -> dict:
        out = {"model": self.model, "count": self.count, "sampler": self.sampler, "steps": self.steps,
               "seed": self.seed, "guidance": self.guidance, "format": self.format}
        if self.class_ is not None:
            out["class"] = self.class_
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.control is not None:
            out["control_image_sha256"] = self.control_sha256
            if self.control_scale is not None:
                out["control_scale"] = self.control_scale
        return out


def _int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    v = body.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(400, f"{name!r} must be an integer in {lo}..{hi}, got {v!r}")
    if not lo <= v <= hi:
        raise RequestError(400 if name != "count" else 413, f"{name!r} must be in {lo}..{hi}, got {v}")
    return v


def parse_generate(body, registry, limits: Limits) -> GenerateRequest:
    """Check a generation request body against the registry and the limits."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
    if "model" not in body:
        raise RequestError(400, f"'model' is required; available: {', '.join(registry.names()) or 'none'}")
    run = registry.get(body["model"])
    if run.kind == "image" and max(run.shape[1:]) > limits.max_image_size:
        raise RequestError(413, f"model {body['model']!r} makes {run.shape[1]}x{run.shape[2]} images; this server "
                                f"samples at most {limits.max_image_size} pixels a side")
    cfg = run.config.sample
    req = GenerateRequest(model=body["model"])
    req.count = _int(body, "count", 1, 1, limits.max_count)
    req.steps = _int(body, "steps", cfg.steps, 1, limits.max_steps)
    req.seed = _int(body, "seed", 0, 0, limits.max_seed - req.count)
    sampler = body.get("sampler", cfg.sampler)
    if sampler not in samplers.names():
        raise RequestError(400, f"'sampler' {sampler!r} is unknown; allowed: {', '.join(samplers.names())}")
    req.sampler = sampler
    g = body.get("guidance", cfg.guidance)  # default: the run's recommendation
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or abs(g) > limits.max_guidance:
        raise RequestError(400, f"'guidance' must be a number with |guidance| <= {limits.max_guidance}, got {g!r}")
    req.guidance = float(g)
    fmt = body.get("format", "json")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise RequestError(400, f"'format' {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    req.format = fmt.lower()
    native = NATIVE_FORMAT.get(run.kind)
    if req.format != "json" and req.format != native:
        what = {"png": "images", "wav": "sound", "gif": "video clips"}[req.format]
        makes = "sound" if run.kind == "audio" else run.kind + "s"
        raise RequestError(400, f"model {req.model!r} makes {makes}, not {what}; use format "
                                + (f"'{native}' or 'json'" if native else "'json'"))
    kind = run.conditioning
    if kind == "lowres":
        raise RequestError(400, f"model {req.model!r} is a super-resolution model; the server does not upscale")
    if "class" in body:
        if kind != "class":
            raise RequestError(400, f"'class' needs a class-conditional model; {req.model!r} is conditioned on "
                                    f"{kind!r}")
        try:
            req.labels = class_labels(run, body["class"], req.count).tolist()
        except ValueError as e:
            raise RequestError(400, f"'class': {e}") from None
        req.class_ = body["class"]
    if "prompt" in body:
        p = body["prompt"]
        if kind != "text":
            raise RequestError(400, f"'prompt' needs a text-conditioned model; {req.model!r} is conditioned on "
                                    f"{kind!r}")
        if not isinstance(p, str) or len(p) > limits.max_prompt:
            raise RequestError(400, f"'prompt' must be a string of at most {limits.max_prompt} characters")
        req.prompt = p
    elif kind == "text":
        raise RequestError(400, f"model {req.model!r} is text-conditioned: give 'prompt' (\"\" for unconditional)")
    _parse_control(body, run, req)
    if req.guidance != 1 and kind not in ("class", "text"):
        raise RequestError(400, f"'guidance' {req.guidance} needs a class- or text-conditioned model; {req.model!r} "
                                f"is conditioned on {kind!r} (use 1)")
    return req


def _parse_control(body: dict, run, req: GenerateRequest) -> None:
    """``control_image`` (base64 image bytes) and ``control_scale`` of a control run."""
    if "control_scale" in body and "control_image" not in body:
        raise RequestError(400, "'control_scale' needs 'control_image'")
    if "control_image" not in body:
        return
    if not ctl.adapters_of(run):
        raise RequestError(400, f"'control_image' needs a control run (undiffuse train-control); {req.model!r} has "
                                f"no control adapter")
    data = body["control_image"]
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except binascii.Error:
        raw = None
    if not raw:
        raise RequestError(400, "'control_image' must be a base64-encoded image file (PNG, JPEG, ...)")
    try:
        req.control = ctl.maps_for(run, [raw], note=lambda message: None, what="'control_image'")
    except ctl.ControlError as e:
        raise RequestError(400, str(e)) from None
    req.control_sha256 = hashlib.sha256(raw).hexdigest()
    if "control_scale" in body:
        if run.config.model.get("kind") != "controlled":
            raise RequestError(400, f"'control_scale' sets the strength of control adapters; {req.model!r} reads its "
                                    f"map concatenated to the input, which has no scale")
        s = body["control_scale"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or abs(s) > 10:
            raise RequestError(400, f"'control_scale' must be a number with |control_scale| <= 10, got {s!r}")
        req.control_scale = float(s)
