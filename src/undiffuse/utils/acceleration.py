"""The fast path on GPUs: channels-last memory, ``torch.compile``, pinned host memory.

Each is a choice with a default that keeps the CPU path as it was: channels-last is on for
CUDA devices only (cuDNN's convolutions prefer NHWC with tensor cores, CPU kernels often do
not), compilation is opt-in (its first steps cost seconds to minutes), and pinned,
non-blocking copies apply only when the destination is a CUDA device. bf16 autocast and
fused AdamW are the trainer's (``train.precision``; fused on CUDA), attention goes through
``scaled_dot_product_attention`` in every network (flash / memory-efficient kernels where
the device has them).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

Tensor = torch.Tensor


def check_device(text: str) -> str:
    """A ``--device`` value: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` ... that exists here
    (ValueError naming what is allowed otherwise)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{text!r} is not a device; allowed: cpu, cuda, cuda:N (N a GPU index), mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{text!r}: this machine (or this torch build, {torch.__version__}) has no CUDA device; "
                             "use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{text!r}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{text!r}: no MPS device here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{text!r}: device type {device.type!r} is not supported; allowed: cpu, cuda, cuda:N, mps")
    return text


def device_option(text: str) -> str:
    """:func:`check_device` as an argparse ``type`` (a bad value is a usage error, status 2)."""
    try:
        return check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def wants_channels_last(setting: bool | None, device: torch.device) -> bool:
    """``train.channels_last``: True / False, or None for "on CUDA devices only"."""
    return device.type == "cuda" if setting is None else bool(setting)


def _to_channels_last(module, args, kwargs):
    convert = (lambda v: v.contiguous(memory_format=torch.channels_last)
               if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v)
    return tuple(convert(a) for a in args), {k: convert(v) for k, v in kwargs.items()}


def channels_last(net: nn.Module) -> nn.Module:
    """Store ``net``'s 4-D weights channels-last and hand it its 4-D image inputs so (a
    forward pre-hook; the state dict's names and values are unchanged)."""
    net.to(memory_format=torch.channels_last)
    if not getattr(net, "_undiffuse_channels_last", False):
        net.register_forward_pre_hook(_to_channels_last, with_kwargs=True)
        net._undiffuse_channels_last = True
    return net


def compiled(net: nn.Module) -> nn.Module:
    """``torch.compile(net)``: the same parameters (the original module keeps them and its
    state dict), a traced and fused forward and backward."""
    return torch.compile(net)


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """Host-to-device copy; to a CUDA device from pinned memory without blocking the host."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
