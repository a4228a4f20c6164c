"""Picking a few-step student's 1- and 2-step noise levels (``fewstep.levels``): the search
finds the level a constructed student is right at, keeps the default on ties, and is
deterministic."""
import numpy as np
import pytest
import torch

from undiffuse.core.noise import noise as make_noise
from undiffuse.fewstep import levels as lv
from undiffuse.metrics.evaluate import features
from undiffuse.samplers.driver import sample

SD = 0.5  # the data: N(0, SD^2 I) in 3-D


def _reference(n=2000):
    return np.random.default_rng(0).normal(0, SD, (n, 3))


def _draw(denoiser, n=400):
    z = make_noise((n, 3), seed=list(range(n)))

    def draw(sigmas):  # the fresh noise of the 2-step sampler independent of z (other seeds)
        return sample(denoiser, z, sampler="consistency", sigmas=sigmas, seed=10_000).numpy()
    return draw


def _mis_scaled(level):
    """A 'student' whose 1-step samples from ``sigma z`` have std ``sigma * SD / level``: right
    (N(0, SD^2)) only when started at ``level``."""
    return lambda x, sigma: x * (SD / level)


def test_candidates_are_geometric_in_range_with_the_default_first():
    lists = lv.candidates(80.0, 0.5, 5, {1: [80.0, 0.0], 2: [80.0, 3.0, 0.0]})
    ones = lists[1]
    assert ones[0] == [80.0, 0.0] and [c[0] for c in ones] == [80.0, 26.75, 8.944, 2.991, 1.0]  # 80 only once
    assert all(c[-1] == 0.0 for c in ones)
    twos = lists[2]
    assert twos == [[80.0, 3.0, 0.0]] + [[80.0, s1, 0.0] for s1 in (20.0, 5.623, 1.581, 0.4446, 0.125)]
    assert lv.candidates(80.0, 0.5, 3, {1: None})[1][0] == [80.0, 0.0]  # no default: the grid alone
    # second stage: the best middle level under the other starts at least twice as high, none tried twice
    assert lv.second_stage([80.0, 5.623, 0.0], twos, 80.0, 0.5, 5) == [[26.75, 5.623, 0.0]]
    assert lv.second_stage([80.0, 0.125, 0.0], twos, 80.0, 0.5, 5) == [[s0, 0.125, 0.0] for s0 in (26.75, 8.944,
                                                                                                 2.991, 1.0)]


@pytest.mark.parametrize("where", [1, 3, 6])
def test_the_search_picks_the_level_the_student_is_right_at(where):
    lists = lv.candidates(80.0, SD, 8, {1: [80.0, 0.0]})
    right = lists[1][where]
    assert right != [80.0, 0.0]
    res = lv.choose(_draw(_mis_scaled(right[0])), _reference(), lists, lambda x: features(x, "pixels"),
                    default={1: [80.0, 0.0]})
    assert res["picked"] == {"1": right}
    rows = res["candidates"]["1"]
    assert [r["sigmas"] for r in rows] == lists[1] and rows[0]["default"] and not any(r["default"] for r in rows[1:])
    fds = [r["fd"] for r in rows]
    assert min(fds) == fds[where] and min(fds) < 0.01 < sorted(fds)[1]  # clearly best, by a margin


def test_ties_keep_the_default_and_the_search_is_deterministic():
    lists = {1: [[80.0, 0.0], [8.0, 0.0], [4.0, 0.0]]}
    same = lambda x, sigma: 0.3 * torch.sign(x)  # every start level gives the same samples
    args = (_draw(same), _reference(), lists, lambda x: features(x, "pixels"))
    a, b = lv.choose(*args, default={1: [80.0, 0.0]}), lv.choose(*args, default={1: [80.0, 0.0]})
    assert a == b and a["picked"] == {"1": [80.0, 0.0]}


def test_two_step_search_beats_a_bad_default():
    """With the mis-scaled student, 2 steps ``[s0, s1, 0]`` give std (SD / L) sqrt(s0^2 SD^2 / L^2 + s1^2):
    the default [80, 3, 0] is far off; the pick is the tried candidate closest to SD, from the
    second stage (a start below 80)."""
    level = 10.0
    lists = lv.candidates(80.0, SD, 9, {2: [80.0, 3.0, 0.0]})
    res = lv.choose(_draw(_mis_scaled(level)), _reference(), lists, lambda x: features(x, "pixels"),
                    default={2: [80.0, 3.0, 0.0]},
                    more=lambda steps, best, tried: lv.second_stage(best, tried, 80.0, SD, 9))
    tried = [r["sigmas"] for r in res["candidates"]["2"]]
    assert len(tried) > len(lists[2]) and tried[:len(lists[2])] == lists[2]
    std = {tuple(c): SD / level * np.hypot(c[0] * SD / level, c[1]) for c in tried}
    closest = min(std, key=lambda c: abs(std[c] - SD))
    assert tuple(res["picked"]["2"]) == closest and closest[0] < 80


@pytest.mark.parametrize("sampler", ["consistency", "euler"])
def test_memo_changes_no_sample_and_saves_the_shared_first_step(sampler):
    calls = []

    def den(x, sigma):
        calls.append(float(sigma[0]))
        return torch.tanh(x / (1 + sigma[:, None]))

    z = make_noise((6, 3), seed=list(range(6)))
    memo = lv.Memo(den)
    for sigmas in ([8.0, 0.0], [8.0, 2.0, 0.0], [8.0, 1.0, 0.0], [4.0, 1.0, 0.0]):
        plain = sample(den, z, sampler=sampler, sigmas=sigmas, seed=5)
        assert torch.equal(sample(memo, z, sampler=sampler, sigmas=sigmas, seed=5), plain)
    assert memo.calls == 1 + 1 + 1 + 2  # the three lists from 8 share one evaluation at 8


def test_featurizer_by_shape():
    name, f = lv.featurizer((1, 8, 8))
    assert "digits" in name
    name, f = lv.featurizer((3,))
    assert "raw" in name and f(np.ones((2, 3))).shape == (2, 3)
    name, f = lv.featurizer((3, 16, 16))
    x = np.random.default_rng(1).random((5, 3, 16, 16))
    assert "random projection" in name and f(x).shape == (5, lv.PROJECTION_DIM)
    assert np.array_equal(f(x), lv.featurizer((3, 16, 16))[1](x))  # fixed


def test_settings_are_checked():
    with pytest.raises(ValueError, match="samples"):
        lv.LevelSearch(samples=1)
    with pytest.raises(ValueError, match="steps"):
        lv.LevelSearch(steps=(3,))
