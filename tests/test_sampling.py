"""The Monte Carlo contexts of the pairwise interaction estimator (`explain.sampling.ContextPlan`)."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_fli2moe.explain.sampling import ContextPlan, packed_row_keys, stratum_rows

PAIRS = np.array([[0, 3], [1, 4], [2, 5]])


def test_plan_fits_the_budget_and_prefers_exact_border_strata_when_cheap():
    for budget in (300, 600, 2000):
        plan = ContextPlan.make(10, PAIRS, budget, border=True, antithetic=True)
        assert plan.players.tolist() == [0, 1, 2, 3, 4, 5] and plan.rows_per_context == 1 + 6 + 3
        rows = [stratum_rows(10, PAIRS, s).reshape(-1, 10) for s in plan.exact_sizes]
        exact = len(np.unique(packed_row_keys(np.packbits(np.concatenate(rows), axis=1)))) if rows else 0
        assert exact + plan.units * 2 * plan.rows_per_context <= budget
        assert plan.exact_sizes == sorted({s for x in range(plan.depth) for s in (x, 8 - x)})
    assert ContextPlan.make(10, PAIRS, 2000, border=True, antithetic=True).units == 0  # all exact: cheaper
    partly = ContextPlan.make(10, PAIRS, 600, border=True, antithetic=True)
    assert partly.depth >= 1 and partly.units >= 2
    no_border = ContextPlan.make(10, PAIRS, 2000, border=False, antithetic=False)
    assert no_border.depth == 0 and no_border.exact_sizes == [] and no_border.units == 2000 // 10
    with pytest.raises(ValueError, match=r"budget=30 is too small"):
        ContextPlan.make(10, PAIRS, 30, border=False, antithetic=True)


def test_contexts_have_uniform_sizes_in_the_middle_and_come_with_their_complements():
    plan = ContextPlan(n=12, pairs=PAIRS, players=np.unique(PAIRS), antithetic=True, depth=2, units=6000)
    contexts = plan.draw_contexts(np.random.default_rng(0))
    assert contexts.shape == (12000, 12)
    np.testing.assert_array_equal(contexts[1::2], ~contexts[0::2])
    sizes = contexts[0::2].sum(1)
    assert sizes.min() == 2 and sizes.max() == 10  # t uniform in depth..n-depth
    counts = np.bincount(sizes, minlength=11)[2:]
    assert counts.min() > 0.8 * 6000 / 9 and counts.max() < 1.2 * 6000 / 9
    # every player is equally likely to be present
    assert np.abs(contexts[0::2].mean(0) - 0.5).max() < 0.03


def test_context_rows_toggle_each_pair_player_and_each_pair():
    plan = ContextPlan(n=7, pairs=PAIRS, players=np.unique(PAIRS), antithetic=False, depth=0, units=2)
    contexts = plan.draw_contexts(np.random.default_rng(1))
    rows = np.unpackbits(np.concatenate(plan.context_rows(contexts)), axis=1, count=7).astype(bool)
    rows = rows.reshape(2, plan.rows_per_context, 7)
    for a, block in zip(contexts, rows):
        np.testing.assert_array_equal(block[0], a)
        for k, p in enumerate(plan.players):
            np.testing.assert_array_equal(block[1 + k] ^ a, np.eye(7, dtype=bool)[p])
        for k, (i, j) in enumerate(PAIRS):
            np.testing.assert_array_equal(block[1 + len(plan.players) + k] ^ a, np.eye(7, dtype=bool)[[i, j]].any(0))
