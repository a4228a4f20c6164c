"""torchrun on CPU with gloo: 2 processes train like 1, their checkpoints resume in 1, and
distributed sampling gives the single process's samples byte for byte.

Each test launches ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m
undiffuse ...`` (a free port is chosen by the rendezvous) on a tiny U-Net.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _cli import run_main
from safetensors.torch import load_file

from undiffuse.io import checkpoint as ckpt
from undiffuse.utils import distributed as dist

TINY = {"model.channels": 8, "model.channel_mult": [1, 2], "model.num_res_blocks": 1,
        "model.attention_levels": [1], "model.head_channels": 8, "optim.warmup_steps": 2,
        "train.log_every": 1, "train.sample_count": 4, "sample.steps": 2, "train.tensorboard": False,
        "optim.accumulation": 2, "train.checkpoint_every": 3,
        # Adam divides by sqrt(v) + eps: with a tiny eps a parameter whose gradient is ~0 moves by
        # +-lr on the sign of rounding noise; a larger eps keeps rounding differences at float size
        "optim.eps": 1e-3}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
# class conditioning: the condition dropout is random too, so its draws are checked as well
TRAIN = ["train", "--data", "digits", "--conditioning", "class", "--batch-size", "32", "--no-progress",
         "--sample-every", "0", *TINY_ARGS]

def _env():
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(args, nproc=1):
    launcher = [sys.executable, "-m", "undiffuse"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "undiffuse",
         "--"]  # '--': torchrun must not read undiffuse's options (it takes --num for its --numa-binding)
    res = subprocess.run([*launcher, *args], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _tensors(run, step, name):
    return load_file(os.path.join(run, "checkpoints", ckpt.checkpoint_name(step), name))


def _losses(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [(e["step"], e["loss"]) for e in map(json.loads, f) if "loss" in e]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one, two, resumed = str(root / "one"), str(root / "two"), str(root / "resumed")
    _run([*TRAIN, "--max-steps", "6", "--out", one])           # 1 process, checkpoints at 3 and 6
    _run([*TRAIN, "--max-steps", "6", "--out", two], nproc=2)  # 2 processes, the same global batch
    # the 2-process checkpoint of step 3 continued by 1 process
    _run([*TRAIN, "--max-steps", "6", "--out", resumed, "--resume", os.path.join(two, "checkpoints",
                                                                                 ckpt.checkpoint_name(3))])
    # and the 1-process checkpoint of step 3 continued by 2 processes
    _run([*TRAIN, "--max-steps", "6", "--out", str(root / "resumed2"), "--resume",
          os.path.join(one, "checkpoints", ckpt.checkpoint_name(3))], nproc=2)
    return one, two, resumed


def _assert_close_checkpoints(run_a, run_b, step):
    for f in ("model.safetensors", "ema.safetensors", "state.safetensors"):
        a, b = _tensors(run_a, step, f), _tensors(run_b, step, f)
        assert a.keys() == b.keys()  # the unwrapped network's names (no DDP 'module.' prefix)
        for k in a:
            if k.startswith("rng."):  # the same random draws were made
                assert torch.equal(a[k], b[k]), k
            else:
                torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{f} {k}")
    with open(os.path.join(run_a, "checkpoints", ckpt.checkpoint_name(step), "state.json")) as f1, \
            open(os.path.join(run_b, "checkpoints", ckpt.checkpoint_name(step), "state.json")) as f2:
        s1, s2 = json.load(f1), json.load(f2)
    assert s1["data_order"] == s2["data_order"] and s1["samples_seen"] == s2["samples_seen"]


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    one, two, _ = runs
    for step in (3, 6):
        _assert_close_checkpoints(one, two, step)
    assert [s for s, _ in _losses(two)] == [1, 2, 3, 4, 5, 6]  # one log, written by rank 0 only
    np.testing.assert_allclose([l for _, l in _losses(two)], [l for _, l in _losses(one)], rtol=1e-5)


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one(runs):
    one, _, resumed = runs
    _assert_close_checkpoints(one, resumed, 6)
    _assert_close_checkpoints(one, os.path.join(os.path.dirname(one), "resumed2"), 6)  # and 1 -> 2
    np.testing.assert_allclose([l for _, l in _losses(resumed)], [l for s, l in _losses(one) if s > 3], rtol=1e-5)


@pytest.mark.slow
def test_distributed_sampling_is_byte_identical(runs, tmp_path):
    one = runs[0]
    common = ["sample", "--checkpoint", one, "--num", "7", "--batch-size", "2", "--format", "npz",
              "--sampler", "dpmpp_2m_sde", "--steps", "3", "--class", "all", "--no-progress"]
    _run([*common, "--out", str(tmp_path / "a.npz")])
    _run([*common, "--out", str(tmp_path / "b.npz")], nproc=2)
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["samples"].shape == (7, 1, 8, 8)
    assert a["samples"].tobytes() == b["samples"].tobytes()
    assert np.array_equal(a["labels"], b["labels"])


@pytest.mark.slow
def test_time_budget_stops_every_rank_together(tmp_path):
    """Each rank measures its own time; the ranks agree on the largest, so none waits forever
    for a step the others no longer take."""
    out = str(tmp_path / "t")
    args = [a for a in TRAIN if a != "--conditioning" and a != "class"]
    _run([*args, "--time-budget", "3s", "--out", out], nproc=2)
    steps = [s for s, _ in _losses(out)]
    assert steps == list(range(1, len(steps) + 1)) and ckpt.complete_checkpoints(out)


@pytest.mark.slow
def test_consistency_distillation_runs_on_two_processes(runs, tmp_path):
    """The trainer's objective hook under DDP: each rank draws the objective's randomness from
    its own stream; rank 0 writes the student's checkpoint."""
    student = str(tmp_path / "student")
    _run(["distill", "--method", "consistency", "--teacher", runs[0], "--out", student, "--max-steps", "2",
          "--no-progress"], nproc=2)
    assert ckpt.complete_checkpoints(student) == ["step_00000002"]


_RECORDING = """
import json, os, sys
from undiffuse import data
from undiffuse.config import resolve
from undiffuse.training.trainer import Trainer
from undiffuse.utils import distributed as dist


class Recording:
    \"\"\"The digits, recording the indices of every batch this process reads.\"\"\"

    def __init__(self, ds):
        self.ds, self.drawn = ds, []

    def __len__(self):
        return len(self.ds)

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def get(self, idx):
        self.drawn.append(idx.tolist())
        return self.ds.get(idx)


run, overrides = sys.argv[1], json.loads(sys.argv[2])
ds = Recording(data.load("digits"))
t = Trainer(resolve("digits", ds, overrides), ds, run, progress=False, log=lambda m: None)
t.fit()
with open(os.path.join(run, f"drawn_{t.world.rank}.json"), "w") as f:
    json.dump(ds.drawn, f)
dist.teardown()
"""


@pytest.mark.slow
def test_ranks_train_on_disjoint_slices_of_the_single_process_batch(tmp_path):
    """Equal checkpoints alone would also hold if every rank trained on the whole batch (the
    mean of equal gradients): record the data indices each rank reads and check that the two
    ranks' rows are disjoint halves whose union, in order, is the single process's batch."""
    script = tmp_path / "recording.py"
    script.write_text(_RECORDING)
    over = json.dumps({**TINY, "optim.batch_size": 16, "train.max_steps": 3, "train.time_budget": None})
    for nproc, run in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        launcher = [sys.executable] if nproc == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        res = subprocess.run([*launcher, str(script), str(run), over], env=_env(), capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-4000:]
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    one, r0, r1 = read(tmp_path / "one" / "drawn_0.json"), read(tmp_path / "two" / "drawn_0.json"), \
        read(tmp_path / "two" / "drawn_1.json")
    assert len(one) == len(r0) == len(r1) == 3 * TINY["optim.accumulation"]  # one read per micro-batch
    for full, a, b in zip(one, r0, r1):
        assert len(full) == 8 and len(a) == len(b) == 4
        assert not set(a) & set(b), (a, b)
        assert a + b == full  # rank 0 the first half, rank 1 the second
    assert len({i for batch in one for i in batch}) == 48  # 6 micro-batches of 8 distinct rows (the data order)


def test_batches_split_evenly_or_the_error_says_how():
    w = dist.World(rank=1, size=2)
    assert dist.local_slice(32, w) == slice(16, 32)
    assert dist.local_slice(32, dist.World()) == slice(0, 32)
    with pytest.raises(ValueError, match="batch of 30 does not split evenly over 4 processes.*optim.batch_size"):
        dist.local_slice(30, dist.World(rank=0, size=4))
    assert dist.my_batches(7, 2, dist.World(rank=1, size=2)) == [2, 6]  # whole batches dealt in turn
    assert dist.my_batches(7, 2, dist.World()) == [0, 2, 4, 6]


def test_env_world(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist.env_world() == dist.World()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK 2 must be in"):
        dist.env_world()
    assert dist.device_for("cuda", dist.World(1, 2, 1)) == "cuda:1"
    assert dist.device_for("cpu", dist.World(1, 2, 1)) == "cpu"


@pytest.fixture(scope="module")
def fsdp_runs(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    two, resumed = str(root / "two"), str(root / "resumed")
    res = _run([*TRAIN, "--max-steps", "6", "--out", two, "--fsdp", "--sample-every", "3"], nproc=2)
    # the sharded run's step-3 checkpoint continued by 1 process, and the 1-process one by 2 sharded
    _run([*TRAIN, "--max-steps", "6", "--out", resumed, "--resume",
          os.path.join(two, "checkpoints", ckpt.checkpoint_name(3))])
    _run([*TRAIN, "--max-steps", "6", "--out", str(root / "resumed2"), "--fsdp", "--resume",
          os.path.join(runs[0], "checkpoints", ckpt.checkpoint_name(3))], nproc=2)
    return runs[0], two, resumed, res


@pytest.mark.slow
def test_fsdp_two_processes_train_like_one(fsdp_runs):
    """Sharded parameters, gradients and AdamW moments; gathered into the same checkpoint
    files a single process writes (gradient accumulation 2 and clipping included)."""
    one, two, _, res = fsdp_runs
    for step in (3, 6):
        _assert_close_checkpoints(one, two, step)
    np.testing.assert_allclose([l for _, l in _losses(two)], [l for _, l in _losses(one)], rtol=1e-5)
    with open(os.path.join(two, "log.jsonl")) as f:
        norms = [e["grad_norm"] for e in map(json.loads, f) if "grad_norm" in e]
    assert max(norms) > 1.0  # the default clip (1.0) acted on the sharded gradients
    assert "FSDP: the network's parameters, gradients and optimizer state sharded over 2 processes" in res.stderr
    grids = sorted(os.listdir(os.path.join(two, "samples")))  # rank 0 drew grids from the gathered EMA
    assert grids == ["step_00000003.png", "step_00000006.png"]


@pytest.mark.slow
def test_fsdp_checkpoints_resume_across_process_counts(fsdp_runs):
    one, two, resumed, _ = fsdp_runs
    _assert_close_checkpoints(one, resumed, 6)  # 2 sharded -> 1
    _assert_close_checkpoints(one, os.path.join(os.path.dirname(two), "resumed2"), 6)  # 1 -> 2 sharded


def test_fsdp_in_one_process_trains_unsharded_and_says_so(tmp_path, capsys):
    code, out, err = run_main([*TRAIN, "--fsdp", "--out", str(tmp_path / "r"), "--max-steps", "1"], capsys)
    assert code == 0 and "--fsdp shards over torchrun's processes" in err
    assert ckpt.complete_checkpoints(str(tmp_path / "r")) == ["step_00000001"]


def test_fsdp_shards_blocks_and_gathers_the_single_process_state():
    """In a one-process gloo group: sharding keeps the forward pass, the gathered state is
    the plain network's, and an optimizer state survives the round trip through shards."""
    import torch.distributed as tdist

    from undiffuse.nets.unet import UNet, UNetConfig
    from undiffuse.training import sharding

    if tdist.is_initialized():
        pytest.skip("a process group is already initialised")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    tdist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        cfg = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_channels=8)
        plain, net = UNet(cfg), UNet(cfg)
        net.load_state_dict(plain.state_dict())
        x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
        opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
        plain(x, t).square().mean().backward()
        opt.step()
        net.load_state_dict(plain.state_dict())
        sharding.shard(net, sharding.mesh(torch.device("cpu"), 1))
        assert sharding.is_sharded(net)
        units = [m for m in net.modules() if type(m).__name__.startswith("FSDP")]
        assert len(units) > 5  # the blocks, not only the root
        torch.testing.assert_close(net(x, t), plain(x, t))
        assert {k: v.shape for k, v in sharding.full_state(net).items()} == \
            {k: v.shape for k, v in plain.state_dict().items()}
        sharded_opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        sharding.load_optimizer_state(sharded_opt, opt.state_dict())
        back = sharding.full_optimizer_state(sharded_opt)
        for i, s in opt.state_dict()["state"].items():
            for k, v in s.items():
                assert torch.equal(back["state"][i][k], v), (i, k)
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_reflow_couplings_split_over_two_processes(tmp_path):
    """Each process draws half of the teacher's couplings and all gather them: the student of
    2 processes is the student of 1 (to float tolerance) and the log says the work was split."""
    teacher = str(tmp_path / "teacher")
    flow = ["--set", 'diffusion.process={"name": "flow"}', "--set", "diffusion.parameterization=flow"]
    _run([*[a for a in TRAIN if a not in ("--conditioning", "class")], *flow, "--max-steps", "2", "--out", teacher])
    common = ["distill", "--method", "reflow", "--teacher", teacher, "--couplings", "10", "--steps", "2",
              "--max-steps", "2", "--no-progress", "--set", "train.checkpoint_every=2"]
    _run([*common, "--out", str(tmp_path / "one")])
    res = _run([*common, "--out", str(tmp_path / "two")], nproc=2)
    assert "drawn by 2 processes" in res.stderr
    _assert_close_checkpoints(str(tmp_path / "one"), str(tmp_path / "two"), 2)
