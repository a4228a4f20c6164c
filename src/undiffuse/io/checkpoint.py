"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

A run folder looks like::

    RUN/config.json                    resolved run config (written at start)
    RUN/log.jsonl                      one JSON object per logged step
    RUN/checkpoints/step_00001000/     one complete checkpoint:
        model.safetensors  ema.safetensors  state.safetensors  state.json
    RUN/latest                         name of the newest complete checkpoint
    RUN/checkpoints/step_.../levels.json   (few-step students) the noise levels picked for
                                       1 and 2 steps with these weights, and every candidate's score

Writes are atomic at two levels: a checkpoint is written into a hidden temporary folder and
renamed into place only when every file is complete (and flushed), the folder is flushed after
the rename, and ``latest`` is then replaced atomically. Old checkpoints beyond ``keep`` are
deleted only after that. A crash at any moment leaves the previous checkpoint complete and
``latest`` pointing at it.

Writing a step that already has a checkpoint (a new best at a saved step, a run resumed from an
earlier checkpoint) never deletes the complete folder before its replacement is in place: the
old folder is renamed aside to ``.old-step_XXXXXXXX-PID``, the new one renamed in, and only then
is the old one deleted. A writer killed between the two renames leaves the old folder aside,
complete; :func:`recover` (run by every writer before it starts) puts it back.

``load_tensors`` refuses anything that is not a safetensors file judged by its content
(header length and JSON header), so a pickle renamed ``.safetensors`` is rejected before
any deserializer sees it.
"""
from __future__ import annotations

import json
import os
import shutil
import struct

import torch
from safetensors.torch import load_file, save_file

from undiffuse.utils.atomic import write_atomic, write_json, write_text

Tensor = torch.Tensor
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
FILES = ("model.safetensors", "ema.safetensors", "state.safetensors", "state.json")
LEVELS = "levels.json"  # optional, beside a checkpoint's files: its picked sampling levels
ASIDE = ".old-"  # prefix of a complete checkpoint set aside while the same step is rewritten


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be used; the message names the path."""


def _fsync(path: str) -> None:
    """Flush a file, or a folder's entries (after a rename in it), to disk."""
    if os.path.isdir(path) and os.name != "posix":  # only POSIX systems open folders for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_safetensors(path: str) -> None:
    """Raise ``CheckpointError`` unless ``path`` holds a safetensors file (by content)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    what = "a pickle" if head[:1] == b"\x80" else "a zip archive (torch.save)" if head[:2] == b"PK" else None
    if len(head) < 9:
        raise CheckpointError(f"{path} is not a safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", head[:8])
    if n + 8 > size or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file" + (f"; its content looks like {what}" if what else "")
                              + ". undiffuse only loads safetensors weights and never unpickles files.")


def load_tensors(path: str, device: str = "cpu") -> dict[str, Tensor]:
    check_safetensors(path)
    try:
        return load_file(path, device=device)
    except Exception as e:  # malformed header or truncated payload
        raise CheckpointError(f"{path} is a damaged safetensors file: {e}") from None


def save_tensors(path: str, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), suffix=".safetensors")


# ----------------------------------------------------------------------------- optimizer state


def optimizer_to_tensors(opt: torch.optim.Optimizer | dict) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer's state_dict (or the optimizer's) into tensors (for safetensors)
    and JSON-able groups."""
    sd = opt if isinstance(opt, dict) else opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = []
    for g, current in zip(meta["param_groups"], opt.state_dict()["param_groups"]):
        groups.append({k: (tuple(v) if isinstance(current.get(k), tuple) else v) for k, v in g.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- run folders


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(run: str, step: int, *, model: dict[str, Tensor], ema: dict[str, Tensor],
                    state_tensors: dict[str, Tensor], state: dict, keep: int = 3) -> str:
    """Write a complete checkpoint for ``step``, point ``latest`` at it, prune old ones.

    An existing checkpoint of the same step is replaced without a moment where neither is
    complete on disk (see the module's note)."""
    root = os.path.join(run, CHECKPOINTS)
    os.makedirs(root, exist_ok=True)
    recover(run)
    name = checkpoint_name(step)
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    aside = os.path.join(root, f"{ASIDE}{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        meta = {"format": "undiffuse-checkpoint", "step": str(step)}
        for fname, tensors in (("model.safetensors", model), ("ema.safetensors", ema),
                               ("state.safetensors", state_tensors)):
            path = os.path.join(tmp, fname)
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, metadata=meta)
            _fsync(path)
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if os.path.exists(final):  # the same step again: set the old one aside (still complete), not delete it
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(aside) and not os.path.exists(final):  # failed between the renames: put it back
            os.replace(aside, final)
        raise
    write_text(os.path.join(run, LATEST), name + "\n")
    _fsync(run)
    shutil.rmtree(aside, ignore_errors=True)  # its replacement is in place and ``latest`` names it
    prune(run, keep)
    return final


def recover(run: str) -> list[str]:
    """Undo what a killed writer left: a complete folder set aside (``.old-NAME-PID``) whose
    ``NAME`` is missing or incomplete is renamed back, one whose ``NAME`` is complete is
    deleted, and other processes' temporary folders are deleted. Returns the names put back.
    For the run's one writer only (a reader must not rename folders under a live writer)."""
    root = os.path.join(run, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    restored = []
    for n in sorted(os.listdir(root)):
        if n.startswith(".tmp-") and not n.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(root, n), ignore_errors=True)
        if not n.startswith(ASIDE):
            continue
        name = n[len(ASIDE):].rsplit("-", 1)[0]
        old, final = os.path.join(root, n), os.path.join(root, name)
        if _complete(final) or not _complete(old):
            shutil.rmtree(old, ignore_errors=True)
            continue
        shutil.rmtree(final, ignore_errors=True)  # at most a partial folder of that name
        os.replace(old, final)
        _fsync(root)
        restored.append(name)
    return restored


def _complete(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in FILES)


def complete_checkpoints(run: str) -> list[str]:
    """Names of complete checkpoints in ``run``, oldest first (temporary folders ignored)."""
    root = os.path.join(run, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    names = [n for n in os.listdir(root) if n.startswith("step_") and _complete(os.path.join(root, n))]
    return sorted(names)


def incomplete_checkpoints(run: str) -> list[str]:
    """``"NAME (what is missing)"`` for each checkpoint folder of ``run`` that cannot be loaded
    because files are missing, oldest first (temporary folders are not checkpoint folders)."""
    root = os.path.join(run, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    out = []
    for n in sorted(os.listdir(root)):
        path = os.path.join(root, n)
        if not n.startswith("step_"):
            continue
        if not os.path.isdir(path):
            out.append(f"{n} (a file, not a folder)")
            continue
        missing = [f for f in FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            out.append(f"{n} ({', '.join(missing)} missing)")
    return out


def prune(run: str, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints; never the latest or the best."""
    names = complete_checkpoints(run)
    protected = {read_latest(run), read_pointer(run, BEST)}
    for name in names[:-keep] if keep > 0 else []:
        if name not in protected:
            shutil.rmtree(os.path.join(run, CHECKPOINTS, name), ignore_errors=True)
    root = os.path.join(run, CHECKPOINTS)
    for n in os.listdir(root):  # temporary folders left by a crashed writer of another process
        if n.startswith(".tmp-") and not n.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(root, n), ignore_errors=True)


def read_pointer(run: str, pointer: str) -> str | None:
    try:
        with open(os.path.join(run, pointer)) as f:
            name = f.read().strip()
    except OSError:
        return None
    return name or None


def read_latest(run: str) -> str | None:
    return read_pointer(run, LATEST)


def mark_best(run: str, name: str) -> None:
    """Point ``RUN/best`` at a complete checkpoint (kept by ``prune`` from then on)."""
    write_text(os.path.join(run, BEST), name + "\n")


def find_checkpoint(path: str) -> str:
    """Resolve a run folder (its latest complete checkpoint) or a checkpoint folder."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if _complete(path):
        return path
    parent = os.path.dirname(os.path.normpath(path))
    if os.path.basename(os.path.normpath(path)) == BEST and os.path.isfile(path):  # RUN/best
        name = read_pointer(parent, BEST)
        if name in complete_checkpoints(parent):
            return os.path.join(parent, CHECKPOINTS, name)
        raise CheckpointError(f"{path!r} points at {name!r}, which is not a complete checkpoint")
    if os.path.isdir(os.path.join(path, CHECKPOINTS)) or os.path.isfile(os.path.join(path, "config.json")):
        latest = read_latest(path)
        names = complete_checkpoints(path)
        if latest in names:
            return os.path.join(path, CHECKPOINTS, latest)
        if names:
            return os.path.join(path, CHECKPOINTS, names[-1])
        raise CheckpointError(f"run {path!r} has no complete checkpoint yet")
    raise CheckpointError(f"{path!r} is neither a run folder (with config.json and checkpoints/) "
                          f"nor a checkpoint folder (with {', '.join(FILES)})")


def run_of(checkpoint: str) -> str:
    """The run folder that holds a checkpoint folder."""
    return os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))


def load_checkpoint(path: str, device: str = "cpu") -> dict:
    """Load a checkpoint folder (or a run's latest): tensors and state, no pickle anywhere."""
    ckpt = find_checkpoint(path)
    out = {name: load_tensors(os.path.join(ckpt, f"{name}.safetensors"), device)
           for name in ("model", "ema", "state")}
    with open(os.path.join(ckpt, "state.json")) as f:
        out["state_json"] = json.load(f)
    out["path"] = ckpt
    return out


def load_checkpoint_config(path: str) -> dict:
    """The run config stored with a checkpoint (run folder or checkpoint folder), JSON only."""
    with open(os.path.join(find_checkpoint(path), "state.json")) as f:
        return json.load(f)["config"]


def write_config(run: str, config: dict) -> None:
    os.makedirs(run, exist_ok=True)
    write_json(os.path.join(run, "config.json"), config)


def read_config(run: str) -> dict:
    path = os.path.join(run, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"run {run!r} has no config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def write_levels(checkpoint: str, record: dict) -> str:
    """Write the sampling levels picked for a checkpoint's weights (``fewstep.levels``) beside
    them, atomically; returns the file's path."""
    path = os.path.join(find_checkpoint(checkpoint), LEVELS)
    write_json(path, record)
    return path


def read_levels(checkpoint: str) -> dict | None:
    """The levels record of a checkpoint folder, or None when it has none (an ordinary run, or a
    student from before levels were picked); ``CheckpointError`` when the file is unreadable."""
    path = os.path.join(checkpoint, LEVELS)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable levels record: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("picked"), dict) or "sampler" not in record:
        raise CheckpointError(f"{path} is not a levels record (a JSON object with 'sampler' and 'picked')")
    return record
