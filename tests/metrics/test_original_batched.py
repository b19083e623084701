"""The batched original (the secrets of a batch in one ``generate`` batch, prefixes left-padded to 128 tokens,
secrets right-padded to 32, codeeraser-sscu.md §1.4) gives the per-secret values of :class:`Reference` (§1.4.1):
``tools/bench_metrics.py`` then times the original algorithm on the values the fast implementation is tested against.

The model is the partly memorized tiny GPT-2 of ``test_memorization.py``, whose fixtures are reused (module-scoped:
the model is trained again, the same way, for this module)."""

from __future__ import annotations

import pytest
import test_memorization
import torch
from original_secret_metrics import NS, BatchedOriginal, S

world, eos_world = test_memorization.world, test_memorization.eos_world


def _assert_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    torch.testing.assert_close(
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        atol=1e-9,
        rtol=0,
        equal_nan=True,
    )


def _el_calls(secrets: list[list[int]], batch_size: int, n: int) -> int:
    """EL_n generate calls of the original: one per offset some secret of the batch scores, one for L < n."""
    calls = 0
    for start in range(0, len(secrets), batch_size):
        lengths = [len(s) for s in secrets[start : start + batch_size]]
        calls += sum(any(length - i >= n for length in lengths) for i in range(S - n + 1))
        calls += any(0 < length < n for length in lengths)
    return calls


@pytest.mark.parametrize("batch_size, ns", [(5, NS), (12, (10,))])
def test_batched_original_equals_the_per_secret_reference(world, batch_size, ns):
    ma = world.expected["ma"]
    assert max(ma) >= 0.9 and min(ma) <= 0.1 and sum(0.1 < v < 0.9 for v in ma) >= 2, ma  # values are spread
    lengths = [len(s) for s in world.secrets]
    assert S in lengths and min(lengths) < min(ns) and max(len(p) for p in world.prefixes) == 128
    original = BatchedOriginal(world.model, world.pad, world.eos, batch_size=batch_size)
    _assert_close(original.ma(world.prefixes, world.secrets), ma)
    assert original.calls == S * -(-len(world.secrets) // batch_size)  # 32 one-token calls per batch
    for n in ns:
        original.calls = 0
        _assert_close(original.el(world.prefixes, world.secrets, n), world.expected[n])
        assert original.calls == _el_calls(world.secrets, batch_size, n)


def test_rows_and_batches_ended_at_eos_match_nothing_beyond(world, eos_world):
    # EOS is the commonest secret token: rows end mid-comparison (pad follows their EOS while other rows go on),
    # and whole batches end before max_new_tokens (generate returns fewer tokens).
    original = BatchedOriginal(world.model, world.pad, eos_world.eos, batch_size=2)
    for n in (3, 10):
        _assert_close(original.el(world.prefixes, world.secrets, n), eos_world.expected[n])
    assert original.short_outputs > 0 and original.ended_rows > 0


def test_the_comparison_can_fail(world):
    # One token changed in a memorized secret: its MA and EL drop, the other secret of the batch keeps its values.
    k = max(range(len(world.secrets)), key=lambda k: world.expected["ma"][k])
    other = min(range(len(world.secrets)), key=lambda k: world.expected["ma"][k])
    secret = list(world.secrets[k])
    middle = len(secret) // 2
    secret[middle] = 2 if secret[middle] != 2 else 3
    assert world.pad not in (2, 3)
    got = BatchedOriginal(world.model, world.pad, world.eos, batch_size=2).all(
        [world.prefixes[k], world.prefixes[other]], [secret, world.secrets[other]], ns=(3,)
    )
    assert got["ma"][0] < world.expected["ma"][k] and got[3][0] < world.expected[3][k]
    _assert_close([got["ma"][1], got[3][1]], [world.expected["ma"][other], world.expected[3][other]])
