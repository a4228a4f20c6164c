"""ONNX export of a run's raw network, and an onnxruntime network for any sampler.

What is exported is the network ``F(x_in, noise_label, **cond)`` the preconditioner wraps
(``precond.Denoiser``), with its noise-level input, a dynamic batch axis and float32 inputs
and output. The denoiser settings (noise process, parameterization, sigma_data, time
scale, consistency boundary) and the sample shape go into the model's metadata, so
:func:`load_onnx_denoiser` rebuilds the same ``Denoiser`` around an onnxruntime session and
every undiffuse sampler runs on it unchanged.

``quantize="int8"`` adds onnxruntime's dynamic quantisation: int8 weights of the matrix
products and convolutions, activations quantised per call (BENCHMARKS.md measures what it
costs in quality and buys in speed).

Needs the ``onnx`` extra: ``pip install 'undiffuse[onnx]'``.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings

import torch

from undiffuse.config import TEXT_EMBEDDING_DIM
from undiffuse.core import process as _process
from undiffuse.core.precond import Denoiser

Tensor = torch.Tensor

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
#: the network's keyword inputs for each conditioning kind, in the exported order
COND_INPUTS = {"none": (), "class": ("class_labels",), "lowres": ("cond_image",),
               "text": ("context", "context_mask")}
#: inputs that are not float32: class indices (int64) and the token mask (bool, True = a token)
_INPUT_DTYPES = {"class_labels": torch.long, "context_mask": torch.bool}
METADATA_KEY = "undiffuse"


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export and inference need the package {module!r}: pip install 'undiffuse[onnx]'") \
            from None


class _Positional(torch.nn.Module):
    """The network with its condition as positional inputs (what the exporter traces)."""

    def __init__(self, net: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, x, noise_label, *cond):
        return self.net(x, noise_label, **dict(zip(self.names, cond)))


def _example_inputs(run, batch: int) -> tuple[tuple[str, ...], tuple[Tensor, ...]]:
    kind = run.conditioning
    if kind not in COND_INPUTS:
        raise ValueError(f"ONNX export of a {kind!r}-conditioned run is not supported; supported conditioning: "
                         f"{', '.join(COND_INPUTS)}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *run.shape), generator=g)
    inputs = [x, torch.rand(batch, generator=g)]
    if kind == "class":
        inputs.append(torch.zeros(batch, dtype=torch.long))
    elif kind == "lowres":
        inputs.append(torch.randn((batch, *run.shape), generator=g))
    elif kind == "text":  # token embeddings and mask at the run's caption length (the batch axis is dynamic)

        tokens = run.config.conditioning.max_tokens
        inputs.append(torch.randn((batch, tokens, TEXT_EMBEDDING_DIM), generator=g))
        inputs.append(torch.arange(tokens).expand(batch, tokens) < torch.tensor([[3], [tokens]])[:batch])
    return ("x", "noise_label", *COND_INPUTS[kind]), tuple(inputs)


def denoiser_metadata(run) -> dict:
    den = run.denoiser
    return {"process": den.process.config(), "parameterization": den.parameterization,
            "sigma_data": den.sigma_data, "time_scale": den.time_scale, "boundary_sigma": den.boundary_sigma,
            "shape": list(run.shape), "kind": run.kind, "conditioning": run.conditioning,
            "inputs": list(COND_INPUTS[run.conditioning]), "checkpoint": os.path.abspath(run.checkpoint),
            "step": run.step, "weights": run.weights}


def export_onnx(run, path: str, *, quantize: str | None = None, opset: int = 17) -> str:
    """Write ``run``'s network (a ``generate.LoadedRun``) as ONNX to ``path``; with
    ``quantize="int8"`` the file holds the dynamically quantised network."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize {quantize!r} is not allowed; allowed: {', '.join(QUANTIZATIONS)} (or none)")
    onnx = _need("onnx")
    names, inputs = _example_inputs(run, batch=2)
    wrapped = _Positional(run.denoiser.net, names[2:]).float().eval()
    dynamic = {n: {0: "batch"} for n in (*names, "out")}
    tmp = path + ".tmp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        try:  # the TorchScript-based exporter: seconds, where the torch.export-based one takes ~30 s
            torch.onnx.export(wrapped, inputs, tmp, input_names=list(names), output_names=["out"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
        except (TypeError, NotImplementedError):  # a torch without it
            batch = torch.export.Dim("batch")
            torch.onnx.export(wrapped, inputs, tmp, input_names=list(names), output_names=["out"], dynamo=True,
                              dynamic_shapes=tuple({0: batch} for _ in inputs), external_data=False)
    model = onnx.load(tmp)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**denoiser_metadata(run), "quantize": quantize})
    onnx.save(model, tmp)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _need("onnxruntime")
        quantize_dynamic(tmp, path, weight_type=QuantType.QInt8)
        os.remove(tmp)
    else:
        os.replace(tmp, path)
    return path


class OnnxNet:
    """An onnxruntime session called like the network: ``net(x, noise_label, **cond)`` ->
    torch tensor (float32 on the CPU; inputs are cast to float32)."""

    def __init__(self, path: str, *, threads: int | None = None):
        ort = _need("onnxruntime")
        opts = ort.SessionOptions()
        threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file {path!r} does not exist")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, x: Tensor, noise_label: Tensor, **cond) -> Tensor:
        feed = {"x": x.detach().float().cpu().numpy(),
                "noise_label": noise_label.detach().float().cpu().reshape(-1).expand(x.shape[0]).contiguous().numpy()}
        for name in self.inputs[2:]:
            if name not in cond:
                raise ValueError(f"this ONNX network needs the input {name!r}")
            v = cond[name].detach().cpu()
            feed[name] = v.to(_INPUT_DTYPES.get(name, torch.float32)).numpy()
        (out,) = self.session.run(["out"], feed)
        return torch.from_numpy(out).to(x.device)


def load_onnx_denoiser(path: str, *, threads: int | None = None) -> Denoiser:
    """The ``Denoiser`` of an exported file (an onnxruntime network inside), usable with every
    sampler; ``.sample_shape`` is the per-sample shape."""
    net = OnnxNet(path, threads=threads)
    m = net.meta
    if not m:
        raise ValueError(f"{path!r} was not written by `undiffuse export` (no {METADATA_KEY!r} metadata)")
    return Denoiser(net, _process.from_config(m["process"]), m["parameterization"], sigma_data=m["sigma_data"],
                    time_scale=m["time_scale"], net_dtype=torch.float32, boundary_sigma=m["boundary_sigma"],
                    sample_shape=tuple(m["shape"]))
