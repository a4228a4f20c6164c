"""The evaluation suite: every number with its protocol.

``evaluate(samples, reference)`` scores generated samples against a reference set in one
feature space and returns a JSON-able dict:

* ``fd``: Frechet distance of Gaussian fits of the features (``frechet``);
* ``kid`` (and ``kid_std``): unbiased kernel distance, cubic polynomial kernel (``kid``);
* ``precision``, ``recall`` (k-NN manifolds), ``density``, ``coverage`` (``prdc``);
* ``copy_rate`` / ``copies``: near-copies of the training set in pixel space (``copies``);
* ``protocol``: sample and reference counts, the feature space, k, KID subsets, the copy rule.

Feature spaces: ``digits`` (the in-project digits classifier's 64-d penultimate layer, for
1x8x8 images in [0, 1]), ``mnist`` (the same for 1x28x28 digits, trained on ``mnist5k``),
``emoji`` (the image-text scorer), ``inception`` and ``pixels`` (the flattened values: images
in [0, 1] or vectors as they are). ``auto`` picks ``digits`` for 1x8x8 images, ``mnist`` for
1x28x28 and ``pixels`` otherwise.

Inputs are arrays in the CLI's sample format: images ``(N, C, H, W)`` in [0, 1], or vectors
``(N, D)``. ``load_set`` reads them from an ``.npz``/``.npy`` file, an image folder or a
built-in dataset name.

Clips ``(N, T, C, H, W)`` in [0, 1] (feature space ``video``, picked by ``auto``) are scored by
``metrics.video.evaluate_video`` instead: per-frame ``fd``, ``clip_fd``, ``identity``,
``motion`` (and ``adherence`` with requested labels), with the reference's own identity and
motion beside them.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from undiffuse import data as _data
from undiffuse.metrics import image_text
from undiffuse.metrics.adherence import class_adherence
from undiffuse.metrics.control import control_scores
from undiffuse.metrics.features import digits_features
from undiffuse.metrics.inception import inception_features
from undiffuse.metrics.mnist_features import HPARAMS as MNIST_HPARAMS
from undiffuse.metrics.mnist_features import mnist_features
from undiffuse.metrics.speech_features import inception_score, speech_features, speech_probabilities
from undiffuse.metrics.video import evaluate_video
from undiffuse.metrics.video_features import CLIP_HPARAMS
from undiffuse.metrics.kid import kid as _kid
from undiffuse.metrics.prdc import prdc as _prdc

from .copies import nearest_copies
from .frechet import frechet_distance, gaussian_stats

FEATURE_SPACES = ("auto", "digits", "mnist", "pixels", "inception", "emoji", "spoken-digits", "video")  # "auto" never picks inception (needs weights)

AUTO_SPACES = {(1, 8, 8): "digits", (1, 28, 28): "mnist"}


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the argument and what was expected."""


def load_set(spec: str, *, what: str = "samples", image_size: int | tuple[int, int] | None = None,
             sample_rate: int = 8000, frames: int | None = None) -> tuple[np.ndarray, str]:
    """Load a sample or reference set as float64: images (N, C, H, W) in [0, 1], clips
    (N, T, C, H, W) in [0, 1], waveforms (N, 1, T) in [-1, 1] or vectors (N, D).

    ``spec``: an ``.npz`` (array ``samples``, as ``undiffuse sample --format npz`` writes, or the
    keys ``data.load`` accepts), an ``.npy``, an image folder, or a built-in dataset name
    (rendered or resized to ``image_size`` when given, e.g. ``emoji`` at the samples' size;
    video data with ``frames`` frames when given, e.g. ``moving-digits`` as the samples).
    """
    if spec.endswith(".npz") and os.path.isfile(spec):
        try:
            with np.load(spec, allow_pickle=False) as f:
                if "samples" in f.files:
                    arr = np.asarray(f["samples"], np.float64)
                    return _check(arr, what, spec), f"{spec} (array 'samples', {len(arr)} items)"
        except ValueError as e:
            raise EvaluationError(f"{what} {spec}: cannot read ({e})") from None
    try:
        ds = _data.load(spec, image_size=image_size, sample_rate=sample_rate,
                        **({} if frames is None else {"frames": frames}))
    except _data.DataError as e:
        raise EvaluationError(f"{what}: {e}") from None
    x = ds.get(np.arange(len(ds)))
    arr = (ds.to_unit(x) if ds.kind in ("image", "video") else x).numpy().astype(np.float64)
    return _check(arr, what, spec), ds.source


def requested_labels(spec: str) -> np.ndarray | None:
    """The ``labels`` array (the class each sample was asked to be) of a samples ``.npz``,
    as ``undiffuse sample --class ... --format npz`` writes it, or None."""
    if not (spec.endswith(".npz") and os.path.isfile(spec)):
        return None
    with np.load(spec, allow_pickle=False) as f:
        return np.asarray(f["labels"]) if "labels" in f.files and "samples" in f.files else None


def sample_rate_of(spec: str) -> int | None:
    """The ``sample_rate`` a samples ``.npz`` records in its parameters (sound samples), or None."""
    if not (spec.endswith(".npz") and os.path.isfile(spec)):
        return None
    with np.load(spec, allow_pickle=False) as f:
        if "parameters" not in f.files:
            return None
        rate = json.loads(str(f["parameters"])).get("sample_rate")
    return int(rate) if rate is not None else None


def _check(arr: np.ndarray, what: str, spec: str) -> np.ndarray:
    if arr.ndim not in (2, 3, 4, 5) or (arr.ndim == 3 and arr.shape[1] != 1):
        raise EvaluationError(f"{what} {spec}: expected images (N, C, H, W), clips (N, T, C, H, W), waveforms "
                              f"(N, 1, T) or vectors (N, D), got shape {arr.shape}")
    if arr.ndim == 3 and np.abs(arr).max(initial=0) > 1 + 1e-6:
        raise EvaluationError(f"{what} {spec}: waveforms must be in [-1, 1], got values up to {np.abs(arr).max():.4g}")
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{what} {spec}: contains non-finite values")
    if arr.ndim in (4, 5) and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise EvaluationError(f"{what} {spec}: images and clips must be in [0, 1], got values in "
                              f"[{arr.min():.4g}, {arr.max():.4g}]")
    return arr


def requested_controls(spec: str) -> tuple[np.ndarray | None, list[str] | None]:
    """The ``controls`` maps and ``control_extractors`` of a samples ``.npz`` (``undiffuse
    sample --control-image ... --format npz``), or (None, None)."""
    if not (spec.endswith(".npz") and os.path.isfile(spec)):
        return None, None
    with np.load(spec, allow_pickle=False) as f:
        if "controls" not in f.files or "samples" not in f.files:
            return None, None
        return np.asarray(f["controls"]), [str(e) for e in f["control_extractors"]]


def requested_prompts(spec: str) -> list[str] | None:
    """The ``prompts`` array (each sample's prompt) of a samples ``.npz``, as ``undiffuse sample
    --prompt/--prompts ... --format npz`` writes it, or None."""
    if not (spec.endswith(".npz") and os.path.isfile(spec)):
        return None
    with np.load(spec, allow_pickle=False) as f:
        return [str(p) for p in f["prompts"]] if "prompts" in f.files and "samples" in f.files else None


def features(x: np.ndarray, space: str, device: str = "cpu", sentence=None, sample_rate: int = 8000) -> np.ndarray:
    """Feature vectors of ``x`` in ``space``; ``device`` runs the Inception network (the small
    digits network, the emoji scorer and raw pixels stay on the CPU). ``sentence``: the text
    embedding function the emoji scorer was trained against (``steering.text.sentence_embeddings``)."""
    if space == "emoji":
        return image_text.embed(x, _emoji_scorer(sentence))[0]
    if space == "digits":
        return digits_features(x)
    if space == "mnist":
        try:
            return mnist_features(x)
        except ValueError as e:
            raise EvaluationError(str(e)) from e
    if space == "pixels":
        return x.reshape(len(x), -1).astype(np.float64)
    if space == "spoken-digits":
        if x.ndim != 3:
            raise EvaluationError(f"feature space 'spoken-digits' needs waveforms (N, 1, T), got shape {x.shape}")
        try:
            return speech_features(x, sample_rate)
        except ValueError as e:
            raise EvaluationError(str(e)) from e
    if space == "inception":
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise EvaluationError(f"feature space 'inception' needs images (N, 1 or 3, H, W), got shape {x.shape}")
        return inception_features(x, device=device)
    raise EvaluationError(f"unknown feature space {space!r}; allowed: {', '.join(FEATURE_SPACES)}")


def _emoji_scorer(sentence):
    if sentence is None:
        raise EvaluationError("feature space 'emoji' needs the text embeddings its scorer is trained against "
                              "(pass sentence=steering.text.sentence_embeddings)")
    return image_text.scorer(sentence)


def describe(space: str, dim: int) -> str:
    return {"digits": f"undiffuse digits classifier, {dim}-d penultimate layer",
            "mnist": f"undiffuse mnist5k classifier, {dim}-d penultimate layer",
            "emoji": f"undiffuse emoji image-text scorer, {dim}-d pooled image features",
            "pixels": f"raw values, {dim}-d",
            "spoken-digits": f"undiffuse spoken-digit classifier on log-mel spectrograms, {dim}-d penultimate layer",
            "video": "per frame: undiffuse mnist5k classifier (frames resized to 28x28); whole clips: undiffuse "
                     "moving-digits clip classifier",
            "inception": f"FID Inception-v3 (pt_inception-2015-12-05-6726825d.pth, pytorch-fid pipeline), "
                         f"{dim}-d pool3"}[space]


def evaluate(samples, reference, *, feature_space: str = "auto", train=None, k: int = 5,
             kid_subsets: int = 100, kid_subset_size: int = 1000, copy_threshold: float = 1 / 3,
             reference_name: str = "reference", seed: int = 0, labels=None, device: str = "cpu",
             prompts=None, sentence=None, controls=None, control_extractors=None, sample_rate: int = 8000) -> dict:
    """Score ``samples`` against ``reference`` (arrays as in the module docstring).

    ``train`` (default: the reference) is the set that near-copies are searched in.
    ``labels``: the class each sample was asked to be; adds ``adherence`` (the share the
    digits classifier reads as requested; 1x8x8 images only). ``prompts`` (one per sample)
    with feature space ``emoji`` adds ``clip_score`` and ``prompt_accuracy``
    (``metrics.image_text``); ``sentence`` is the text embedding function the scorer uses.
    ``controls`` with ``control_extractors`` (as ``sample --control-image --format npz``
    writes them) add the control adherence scores (``metrics.control``). Waveforms (N, 1, T)
    at ``sample_rate`` are read by the spoken-digit classifier (``metrics.speech_features``),
    which adds ``is`` (its Inception-Score-like diversity) and reads ``adherence`` itself.
    Clips (N, T, C, H, W) go to ``metrics.video.evaluate_video`` (feature space ``video``).
    """
    samples, reference = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    if samples.shape[1:] != reference.shape[1:]:
        raise EvaluationError(f"samples have items of shape {samples.shape[1:]} but the reference has "
                              f"{reference.shape[1:]}; they must match")
    if samples.ndim == 5 or feature_space == "video":
        return _evaluate_clips(samples, reference, feature_space, labels, reference_name)
    for name, arr in (("samples", samples), ("reference", reference)):
        if len(arr) < 2:
            raise EvaluationError(f"{name}: at least 2 items are needed for a covariance, got {len(arr)}")
        if len(arr) <= k:
            raise EvaluationError(f"{name}: precision/recall with k={k} need more than {k} items, got {len(arr)}")
    if feature_space == "auto":
        feature_space = "spoken-digits" if samples.ndim == 3 else AUTO_SPACES.get(tuple(samples.shape[1:]), "pixels")
    if feature_space not in FEATURE_SPACES:
        raise EvaluationError(f"unknown feature space {feature_space!r}; allowed: {', '.join(FEATURE_SPACES)}")
    if prompts is not None and feature_space != "emoji":
        raise EvaluationError(f"prompt scores (clip_score, prompt_accuracy) need feature space 'emoji', the "
                              f"image-text scorer; got {feature_space!r}")
    t0 = time.perf_counter()
    fs, fr = (features(a, feature_space, device, sentence, sample_rate) for a in (samples, reference))
    dim = fs.shape[1]
    out = {"fd": frechet_distance(*gaussian_stats(fs), *gaussian_stats(fr))}
    k_out = _kid(fs, fr, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    out["kid"], out["kid_std"] = k_out["kid"], k_out["kid_std"]
    pr = _prdc(fr, fs, k=k)
    out.update({key: pr[key] for key in ("precision", "recall", "density", "coverage")})
    train = reference if train is None else np.asarray(train, np.float64)
    cp = nearest_copies(samples.reshape(len(samples), -1), train.reshape(len(train), -1), threshold=copy_threshold)
    out["copy_rate"], out["copies"] = cp["copy_rate"], cp["copies"]
    notes = []
    if min(len(fs), len(fr)) <= dim:
        notes.append(f"fewer items than feature dimensions ({dim}): the covariances are singular and FD "
                     "is dominated by estimation error")
    out["protocol"] = {
        "samples": len(samples), "reference": reference_name, "reference_count": len(reference),
        "features": describe(feature_space, dim), "feature_space": feature_space,
        "prdc_k": k, "kid": f"{k_out['subsets']} subsets of {k_out['subset_size']}, kernel (x.y/d + 1)^3",
        "copy_rule": f"pixel distance to the nearest training item < {copy_threshold:.3g} x that item's "
                     f"nearest-neighbour spacing ({len(train)} training items)",
        "seconds": round(time.perf_counter() - t0, 2), "notes": notes,
    }
    if feature_space == "spoken-digits":
        probs = speech_probabilities(samples, sample_rate)
        out["is"] = inception_score(probs)
        out["protocol"]["is"] = "exp(mean KL(p(y|x) || p(y))) of the spoken-digit classifier (10 at most)"
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            hit = probs.argmax(1) == labels
            out["adherence"] = float(hit.mean())
            out["adherence_per_class"] = {int(c): float(hit[labels == c].mean()) for c in np.unique(labels)}
            out["protocol"]["adherence"] = (f"the spoken-digit classifier reads the requested digit "
                                            f"({len(np.unique(labels))} classes requested)")
    elif labels is not None:
        adh = class_adherence(samples, labels)
        out["adherence"], out["adherence_per_class"] = adh["adherence"], adh["per_class"]
        out["protocol"]["adherence"] = f"{adh['protocol']['reader']} reads the requested class " \
                                       f"({adh['protocol']['classes_requested']} classes requested)"
    if prompts is not None:
        out.update(image_text.text_scores(image_text.embed(samples, _emoji_scorer(sentence))[1], list(prompts),
                                          sentence, seed=seed))
        out["protocol"]["prompt_accuracy"] = (f"own prompt ranked above {out.pop('distractors')} others drawn from "
                                              f"{out.pop('distractor_pool')} emoji names (chance "
                                              f"{out.pop('prompt_accuracy_chance'):.2f})")
    if controls is not None:
        scores = control_scores(samples, controls, control_extractors)
        out.update(scores)
        out["protocol"]["control"] = ("edge F1 with a 1-pixel tolerance (control_f1, sketch_f1; control_f1_exact: "
                                      "none), foreground IoU "
                                      "(mask_iou), mean absolute map difference (control_mae), each against the "
                                      "maps the samples were steered by")
    out["_copies"] = cp  # for the closest-pairs picture; dropped by to_json
    return out


def _evaluate_clips(samples, reference, feature_space: str, labels, reference_name: str) -> dict:
    """Clips (N, T, C, H, W): ``metrics.video.evaluate_video`` with the suite's protocol fields."""
    if samples.ndim != 5 or feature_space not in ("auto", "video"):
        raise EvaluationError(f"feature space {feature_space!r} does not read clips and 'video' reads only clips "
                              f"(N, T, C, H, W); got shape {samples.shape} with feature space {feature_space!r}")
    for name, arr in (("samples", samples), ("reference", reference)):
        if len(arr) < 2:
            raise EvaluationError(f"{name}: at least 2 clips are needed for a covariance, got {len(arr)}")
    try:
        out = evaluate_video(samples, reference, labels)
    except ValueError as e:
        raise EvaluationError(str(e)) from e
    sizes = (("fd", MNIST_HPARAMS["features"], len(samples) * samples.shape[1]),  # frames
             ("clip_fd", CLIP_HPARAMS["features"], len(samples)))
    out["protocol"].update({"reference": reference_name, "feature_space": "video", "features": describe("video", 0),
                            "notes": [f"fewer items ({count}) than feature dimensions ({d}) for {key}: the "
                                      f"covariances are singular and it is dominated by estimation error"
                                      for key, d, count in sizes if count <= d]})
    return out


def to_json(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _video_lines(result: dict) -> list[str]:
    p, ref = result["protocol"], result.get("reference", {})

    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = [f"{p['samples']} clips {tuple(p['clip_shape'])} vs {p['reference_count']} reference clips "
             f"({p['reference']}); features: {p['features']}",
             f"  FD (frames) {result['fd']:.4f}",
             f"  clip FD     {result['clip_fd']:.4f}",
             f"  identity    {result['identity']:.3f}   tolerant {result['identity_tolerant']:.3f}   frames "
             f"{result['identity_frames']:.3f}" + (f"   (reference: {ref['identity']:.3f} / "
                                                   f"{ref['identity_tolerant']:.3f} / {ref['identity_frames']:.3f})"
                                                   if ref else ""),
             f"  motion      {num(result['motion'], '.3f')} px   one digit {num(result['motion_one'], '.3f')}   two "
             f"{num(result['motion_two'], '.3f')}   tracked {result['motion_tracked']:.0%}"
             + (f"   (reference: {num(ref['motion'], '.3f')} / {num(ref['motion_one'], '.3f')} / "
                f"{num(ref['motion_two'], '.3f')})" if ref else "")]
    if "adherence" in result:
        lines.append(f"  adherence   {result['adherence']:.1%}  ({p['adherence']})")
    return lines + [f"  note: {n}" for n in p["notes"]]


def summary_lines(result: dict) -> list[str]:
    p = result["protocol"]
    if p.get("feature_space") == "video":
        return _video_lines(result)
    lines = [f"{p['samples']} samples vs {p['reference_count']} reference items ({p['reference']}); "
             f"features: {p['features']}",
             f"  FD         {result['fd']:.4f}",
             f"  KID        {result['kid']:.5f} +- {result['kid_std']:.5f}  ({p['kid']})",
             f"  precision  {result['precision']:.3f}   recall {result['recall']:.3f}   (k = {p['prdc_k']})",
             f"  density    {result['density']:.3f}   coverage {result['coverage']:.3f}",
             f"  copies     {result['copies']} of {p['samples']} ({result['copy_rate']:.2%}); {p['copy_rule']}"]
    if "is" in result:
        lines.append(f"  IS         {result['is']:.3f}  ({p['is']})")
    if "adherence" in result:
        lines.append(f"  adherence  {result['adherence']:.1%}  ({p['adherence']})")
    if "clip_score" in result:
        lines.append(f"  clip_score {result['clip_score']:.4f}   prompt_accuracy {result['prompt_accuracy']:.3f}  "
                     f"({p['prompt_accuracy']})")
    for key in ("control_f1", "control_f1_exact", "sketch_f1", "mask_iou", "control_mae"):
        if key in result:
            lines.append(f"  {key:<10} {result[key]:.3f}")
    lines += [f"  note: {n}" for n in p["notes"]]
    return lines
