"""Two experts by noise level in one call: train the high-noise expert for a share of the
budget into ``OUT/expert-high``, then the low-noise expert for the rest into ``OUT``, whose
config names the pair, the hand-off level and the guidance they were measured with.

This is the recipe that measured best for speech on a CPU (BENCHMARKS.md, the audio section):
at equal time, a 1-D U-Net over the mel frames for noise levels above sigma 1 plus the 2-D mel
U-Net below it read the requested digit in 0.97 of samples where the 2-D U-Net alone, trained
for the whole time, reached 0.21. ``undiffuse train --experts`` (the default for
``--data spoken-digits``) goes through here; ``load_run`` joins the pair again for every command
that samples the run (``sample``, ``serve``, ``inpaint``), so nothing more is asked of the user.

Time counts both stages' training steps, as the latent route does: with ``time_budget`` B the
high expert trains for ``HIGH_SHARE * B`` seconds and the low expert for B minus the seconds
the high expert recorded, so a resumed run gets the same split. ``max_steps`` splits the same way.
"""
from __future__ import annotations

import json
import os

from undiffuse.io import checkpoint as ckpt
from undiffuse.utils.atomic import write_json

HIGH = "expert-high"  # the high-noise expert's folder inside the run
PLAN = "experts.json"  # inside the run: the options the pair was started with (for a resume)
HIGH_PRESET, LOW_PRESET = "audio-mel-high", "audio-mel-low"
HIGH_SHARE = 0.5   # of the time budget (or of max_steps): the benchmark's 7.5 + 7.5 minutes
ABOVE = 1.0        # the hand-off noise level: the high expert denoises every sigma above it
GUIDANCE = 2.0     # classifier-free guidance: on three benchmark pairs fd 38.7 / 40.8 / 40.5 against 45.3 / 47.4 / 45.6 at 2.5


def high_budget(time_budget: float | None, max_steps: int | None) -> tuple[float | None, int | None]:
    """The high-noise expert's (time budget, max steps) out of the whole recipe's."""
    return (time_budget and time_budget * HIGH_SHARE,
            max(1, round(max_steps * HIGH_SHARE)) if max_steps else None)


def rest_of_budget(time_budget: float | None, max_steps: int | None, high: dict) -> tuple[float | None, int | None]:
    """The low-noise expert's (time budget, max steps): the recipe's less what the high expert
    recorded (``high``: its latest checkpoint's state, see :func:`high_state`)."""
    if time_budget:
        time_budget = max(1.0, time_budget - float(high["elapsed"]))
    if max_steps:
        max_steps = max(1, max_steps - int(high["step"]))
    return time_budget, max_steps


def high_state(out: str) -> dict | None:
    """The latest complete checkpoint's state of ``out``'s high expert (step, elapsed, config),
    or None when it has none yet."""
    try:
        path = ckpt.find_checkpoint(os.path.join(out, HIGH))
    except ckpt.CheckpointError:
        return None
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def finished(state: dict | None) -> bool:
    """Whether a high expert's recorded state has reached its own budget (its steps or time)."""
    if state is None:
        return False
    tr = state["config"]["train"]
    return ((tr.get("max_steps") is not None and state["step"] >= tr["max_steps"])
            or (tr.get("time_budget") is not None and state["elapsed"] >= tr["time_budget"]))


def low_overrides() -> dict:
    """The config entries that make a run the low-noise expert of the pair (its own folder holds the high one)."""
    return {"sample.expert": HIGH, "sample.expert_above": ABOVE, "sample.guidance": GUIDANCE}



def save_plan(out: str, overrides: dict) -> None:
    """Record the options (config overrides) the pair was started with, so that a resume that
    reaches the low-noise expert before it has a checkpoint trains it as asked the first time."""
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, PLAN), {"overrides": overrides})


def saved_plan(out: str) -> dict:
    """The overrides :func:`save_plan` recorded in ``out`` ({} when there are none)."""
    try:
        with open(os.path.join(out, PLAN)) as f:
            return dict(json.load(f).get("overrides", {}))
    except FileNotFoundError:
        return {}
