"""The stopping rule against a literal transcription of CodeEraser's code; the step plan's sharding."""

from __future__ import annotations

import random

import pytest

from fabricunlearn.train.plan import micro_batches, plan_epoch
from fabricunlearn.train.stopping import StoppingRule


def original_rule(history, ma_threshold, el_threshold, el_n=10, margin=0.3, patience=5):
    """reference codeeraser-sscu.md §3, line by line: returns (stop epoch or None, best epoch)."""
    best_ma, best_el, counter, el_flag, best_epoch = 1, 1, 0, False, -1
    for epoch, (ma, el) in enumerate(history, 1):
        if ma <= best_ma:
            if el_flag:
                if el <= best_el:
                    best_el, counter, best_ma, best_epoch = el, 0, ma, epoch
                else:
                    counter += 1
            else:
                best_ma, best_epoch = ma, epoch
        if ma < ma_threshold:
            if el_n != 10:
                return epoch, best_epoch
            elif el_flag and (el < el_threshold or counter >= patience):
                return epoch, best_epoch
        if ma <= ma_threshold + margin and el_n == 10:
            el_flag = True
    return None, best_epoch


@pytest.mark.parametrize("seed", range(200))
def test_stopping_rule_matches_the_original(seed):
    rng = random.Random(seed)
    el_n = rng.choice([10, 10, 10, 5])
    history, ma, el = [], 1.0, 1.0
    for _ in range(40):  # noisy descent with plateaus and bumps, the shapes the rule has to handle
        ma = min(1.0, max(0.0, ma - rng.uniform(-0.05, 0.12)))
        el = min(1.0, max(0.0, el - rng.uniform(-0.04, 0.1)))
        history.append((round(ma, 2), round(el, 2)))
    thresholds = (rng.uniform(0.2, 0.6), rng.uniform(0.0, 0.2))
    expected_stop, expected_best = original_rule(history, *thresholds, el_n=el_n)

    rule = StoppingRule(*thresholds, el_n=el_n)
    stop = None
    for epoch, (ma, el) in enumerate(history, 1):
        rule.update(epoch, ma, el if rule.needs_el else None)
        if rule.stop_reason is not None:
            stop = epoch
            break
    assert stop == expected_stop
    assert rule.best_epoch == expected_best


def test_stopping_rule_survives_a_state_round_trip():
    rule = StoppingRule(0.5, 0.1)
    for epoch, ma in enumerate([0.9, 0.7, 0.6], 1):
        rule.update(epoch, ma, 0.3 if rule.needs_el else None)
    copy = StoppingRule(0.0, 0.0)
    copy.load_state_dict(rule.state_dict())
    assert copy == rule


@pytest.mark.parametrize("n,world,mb", [(32, 4, 2), (5, 2, 2), (1, 4, 1), (7, 3, 2), (33, 8, 4)])
def test_micro_batches_cover_each_document_once_and_balance_the_passes(n, world, mb):
    indices = list(range(100, 100 + n))
    shares = [micro_batches(indices, world, r, mb) for r in range(world)]
    assert len({len(s) for s in shares}) == 1, "every rank must run the same number of micro-batches"
    seen = sorted(i for s in shares for chunk in s for i in chunk)
    assert seen == indices, "each document exactly once: no DistributedSampler-style repeats"
    assert all(len(chunk) <= mb for s in shares for chunk in s)


def test_two_phase_plan_is_one_forget_step_then_one_retain_step():
    steps = plan_epoch(
        schedule="two_phase", n_forget=32, n_retain=16, uses_retain=True, global_batch=8, seed=1, epoch=3, shuffle=True
    )
    assert [s.phase for s in steps] == ["forget", "retain"]
    assert sorted(steps[0].forget) == list(range(32)) and sorted(steps[1].retain) == list(range(16))
    ga = plan_epoch(
        schedule="two_phase", n_forget=32, n_retain=16, uses_retain=False, global_batch=8, seed=1, epoch=3, shuffle=True
    )
    assert [s.phase for s in ga] == ["forget"]


def test_interleaved_plan_pairs_forget_with_retain_and_reshuffles_per_epoch():
    kwargs = dict(
        schedule="interleaved", n_forget=10, n_retain=3, uses_retain=True, global_batch=4, seed=1, shuffle=True
    )
    steps = plan_epoch(epoch=1, **kwargs)
    assert [len(s.forget) for s in steps] == [4, 4, 2]
    assert all(len(s.forget) == len(s.retain) for s in steps)
    assert sorted(i for s in steps for i in s.forget) == list(range(10))
    assert [s.forget for s in steps] != [s.forget for s in plan_epoch(epoch=2, **kwargs)]
    assert [s.forget for s in steps] == [s.forget for s in plan_epoch(epoch=1, **kwargs)]
