"""Pairwise SII / redundancy-gap estimators: exactness, unbiasedness, standard errors, budget, errors."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch

from modeling_fli2moe.explain.results import InteractionResult
from modeling_fli2moe.explain.shapley import (
    MAX_EXACT_PLAYERS,
    PairInteractionApproximator,
    cross_modal_pairs,
    exact_shapley_interactions,
    shapley_interactions,
    sii_weights,
)
from modeling_fli2moe.testing.games import (
    CountingValueFn,
    MLPGame,
    MobiusGame,
    PlantedGame,
    TableGame,
    numpy_game,
    random_game,
    to_shapiq_game,
    torch_value_fn,
)

KINDS = ("table", "mobius", "mlp", "planted")


def _game(kind: str, n: int, seed: int = 0):
    if kind == "planted":
        return PlantedGame(n, and_pair=(0, n // 2), or_pair=(1, n // 2 + 1), random_state=seed)
    return random_game(kind, n, random_state=seed)


def _within(result: InteractionResult, exact: InteractionResult, k: float = 4.0) -> None:
    for name in ("sii", "redundancy_gap"):
        err = np.abs(getattr(result, name) - getattr(exact, name))
        bound = k * getattr(result, f"{name}_se") + 1e-9
        worst = int(np.argmax(err - bound))
        assert np.all(err <= bound), (
            f"{name}: pair {tuple(result.pairs[worst])} off by {err[worst]:.4g} > {k} SE = {bound[worst]:.4g}"
        )


def _brute_force(value_fn, n: int, pairs) -> tuple[np.ndarray, np.ndarray]:
    """SII and RG straight from the definitions (size uniform in 0..n-2, then a uniform s-subset)."""
    cache: dict[frozenset, float] = {}

    def v(s: frozenset) -> float:
        if s not in cache:
            row = torch.zeros(1, n, dtype=torch.bool)
            row[0, list(s)] = True
            cache[s] = float(value_fn(row)[0])
        return cache[s]

    sii, rg = [], []
    for i, j in pairs:
        rest = [p for p in range(n) if p not in (i, j)]
        d_total = g_total = 0.0
        for size in range(n - 1):
            subsets = [frozenset(c) for c in itertools.combinations(rest, size)]
            d = [v(s | {i, j}) - v(s | {i}) - v(s | {j}) + v(s) for s in subsets]
            g = [min(v(s | {i}), v(s | {j})) - v(s) for s in subsets]
            d_total += np.mean(d) / (n - 1)
            g_total += np.mean(g) / (n - 1)
        sii.append(d_total)
        rg.append(g_total)
    return np.array(sii), np.array(rg)


# --------------------------------------------------------------------------------------------- exact
@pytest.mark.parametrize("kind", KINDS)
def test_exact_sii_agrees_with_shapiq_exact_computer(kind):
    shapiq = pytest.importorskip("shapiq")
    n = 8
    game = _game(kind, n, seed=3)
    pairs = list(itertools.combinations(range(n), 2))
    ours = exact_shapley_interactions(game, n, pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = shapiq.ExactComputer(numpy_game(game, n), n_players=n)("SII", order=2)
    expected = np.array([reference[p] for p in pairs])
    np.testing.assert_allclose(ours.sii, expected, atol=1e-10)
    assert ours.evaluations == 2**n and ours.method == "exact"
    assert np.all(ours.sii_se == 0) and np.all(ours.redundancy_gap_se == 0)


def test_exact_matches_definitions_and_closed_form():
    n = 6
    game = MobiusGame.random(n, max_order=4, terms_per_order=6, random_state=1)
    pairs = [(0, 1), (2, 5), (4, 3)]
    exact = exact_shapley_interactions(game, n, pairs, batch_size=7)
    sii, rg = _brute_force(game, n, pairs)
    np.testing.assert_allclose(exact.sii, sii, atol=1e-12)
    np.testing.assert_allclose(exact.redundancy_gap, rg, atol=1e-12)
    np.testing.assert_allclose(exact.sii, game.exact_sii(pairs), atol=1e-12)


def test_sii_weights_sum_to_one_per_pair():
    for n in (2, 5, 13, 40):
        w = sii_weights(n)
        total = sum(w[s] * math.comb(n - 2, s) for s in range(n - 1))
        assert total == pytest.approx(1.0)


def test_planted_game_truth():
    n = 10
    game = PlantedGame(n, and_pair=(0, 5), or_pair=(1, 6), random_state=0)
    exact = exact_shapley_interactions(game, n, [(0, 5), (1, 6)])
    np.testing.assert_allclose(exact.sii, [1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(exact.redundancy_gap, [0.0, 1.0], atol=1e-12)


# -------------------------------------------------------------------------------------- Monte Carlo
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("antithetic", [True, False])
def test_mc_matches_exact_within_4_se(kind, antithetic):
    n = 10
    game = _game(kind, n, seed=11)
    pairs = cross_modal_pairs([0] * 5 + [1] * 5)  # 25 pairs, 36 rows per context
    exact = exact_shapley_interactions(game, n, pairs)
    result = shapley_interactions(
        game, n, pairs, budget=36 * 960, random_state=5, antithetic=antithetic, border=False
    )
    assert result.n_contexts >= 960 and result.exact_sizes == []
    _within(result, exact)


@pytest.mark.parametrize("kind", ("table", "mlp", "mobius"))
def test_mc_with_exact_border_matches_exact_within_4_se(kind):
    n = 12
    game = _game(kind, n, seed=2)
    pairs = [(i, j) for i in range(3) for j in range(6, 9)]  # 9 pairs over 6 players: 16 rows per context
    exact = exact_shapley_interactions(game, n, pairs)
    result = shapley_interactions(game, n, pairs, budget=3000, random_state=0)
    assert result.exact_sizes and result.n_contexts >= 100
    assert result.exact_sizes == sorted(result.exact_sizes)
    _within(result, exact)


@pytest.mark.parametrize("border", [True, False])
def test_mc_is_unbiased_over_many_runs(border):
    """The mean of many small-budget estimates converges to the exact value (no bias at any size)."""
    n = 10
    game = MLPGame(n, random_state=4)
    pairs = [(0, 5), (1, 6), (2, 7), (8, 9)]
    exact = exact_shapley_interactions(game, n, pairs)
    runs = [
        shapley_interactions(game, n, pairs, budget=500, random_state=seed, border=border) for seed in range(400)
    ]
    assert runs[0].n_contexts > 0 and bool(runs[0].exact_sizes) == border  # border: sampled + exact strata
    for name in ("sii", "redundancy_gap"):
        values = np.stack([getattr(r, name) for r in runs])
        se_of_mean = values.std(0, ddof=1) / math.sqrt(len(runs))
        err = np.abs(values.mean(0) - getattr(exact, name))
        assert np.all(err <= 4 * se_of_mean + 1e-9), (name, err, se_of_mean)
        # the per-run standard errors describe the spread across runs
        reported = np.mean([getattr(r, f"{name}_se") for r in runs], axis=0)
        spread = values.std(0, ddof=1)
        assert np.all((reported > 0.6 * spread) & (reported < 1.5 * spread)), (name, reported, spread)


def test_standard_error_falls_as_one_over_sqrt_contexts_and_the_budget_is_spent():
    n = 16  # 65,536 coalitions: far from all of them at either budget
    game = MLPGame(n, random_state=0)
    pairs = cross_modal_pairs([0] * 8 + [1] * 8)  # 64 pairs: 162 rows per antithetic unit
    small = shapley_interactions(game, n, pairs, budget=162 * 30, random_state=1, border=False)
    large = shapley_interactions(game, n, pairs, budget=162 * 120, random_state=2, border=False)
    for result in (small, large):  # shared rows leave room that more contexts fill
        assert result.budget - 162 < result.evaluations <= result.budget
    assert small.n_contexts >= 60 and large.n_contexts >= 4 * small.n_contexts
    expected = math.sqrt(small.n_contexts / large.n_contexts)
    ratio = np.mean(large.sii_se) / np.mean(small.sii_se)
    ratio_rg = np.mean(large.redundancy_gap_se) / np.mean(small.redundancy_gap_se)
    assert 0.8 * expected < ratio < 1.25 * expected, (ratio, expected)
    assert 0.8 * expected < ratio_rg < 1.25 * expected, (ratio_rg, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("border", [True, False])
@pytest.mark.parametrize("antithetic", [True, False])
def test_evaluations_never_exceed_budget(kind, border, antithetic):
    n = 9
    pairs = [(0, 5), (1, 6), (2, 7), (0, 6), (3, 8)]
    rows = 1 + 8 + 5
    for budget in (4 * rows, 4 * rows + 3, 150, 333, 700, 5000):
        game = _game(kind, n, seed=budget)
        result = shapley_interactions(
            game, n, pairs, budget, random_state=budget, batch_size=17, antithetic=antithetic, border=border
        )
        assert result.evaluations <= budget
        assert result.evaluations == game.evaluations  # every row passed to value_fn is counted
        assert game.calls == math.ceil(game.evaluations / 17) and game.max_batch <= 17
        assert result.budget == budget


def test_one_context_costs_one_row_per_pair_plus_players_plus_one():
    n = 14
    game = MLPGame(n, random_state=0)
    pairs = cross_modal_pairs([0] * 7 + [1] * 7)  # 49 pairs over 14 players
    rows = 1 + 14 + 49
    result = shapley_interactions(game, n, pairs, budget=rows * 10, random_state=0, antithetic=False, border=False)
    assert result.n_contexts >= 10  # ten priced without shared rows, more where rows are shared
    assert rows * 10 - rows < result.evaluations <= rows * 10  # the budget is spent
    assert game.calls == 1  # one value_fn call for the whole (small) budget


def test_all_exact_when_budget_covers_every_stratum():
    n = 7
    game = MLPGame(n, random_state=1)
    pairs = [(0, 1), (2, 6)]
    exact = exact_shapley_interactions(game, n, pairs)
    result = shapley_interactions(game, n, pairs, budget=2**n, random_state=0)
    assert result.method == "exact" and result.n_contexts == 0
    np.testing.assert_allclose(result.sii, exact.sii, atol=1e-12)
    np.testing.assert_allclose(result.redundancy_gap, exact.redundancy_gap, atol=1e-12)
    assert np.all(result.sii_se == 0)


def test_two_players():
    game = TableGame(np.array([0.0, 1.0, 2.0, 5.0]))
    exact = exact_shapley_interactions(game, 2, [(0, 1)])
    mc = shapley_interactions(game, 2, [(0, 1)], budget=100, random_state=0, border=False)
    assert exact.sii[0] == pytest.approx(2.0) and exact.redundancy_gap[0] == pytest.approx(1.0)
    assert mc.sii[0] == pytest.approx(2.0) and mc.redundancy_gap[0] == pytest.approx(1.0)


def test_planted_pairs_rank_first():
    n = 12
    game = PlantedGame(n, and_pair=(2, 8), or_pair=(4, 10), random_state=7)
    pairs = cross_modal_pairs([0] * 6 + [1] * 6)  # 36 cross-modal pairs
    result = shapley_interactions(game, n, pairs, budget=1500, random_state=0)
    assert result.top_k(1, by="sii").pair_list() == [(2, 8)]
    assert result.top_k(1, by="redundancy_gap").pair_list() == [(4, 10)]
    and_index = result.pair_list().index((2, 8))
    or_index = result.pair_list().index((4, 10))
    # an order-2 game has a constant D and G per pair: the estimate is exact, sampled strata included
    assert result.n_contexts > 0 and result.exact_sizes
    np.testing.assert_allclose(result.sii[[and_index, or_index]], [1.0, -1.0], atol=1e-9)
    np.testing.assert_allclose(result.redundancy_gap[[and_index, or_index]], [0.0, 1.0], atol=1e-9)


def test_results_follow_the_requested_order_and_symmetry():
    n = 9
    game = MLPGame(n, random_state=3)
    pairs = [(5, 1), (1, 5), (0, 8), (3, 2)]
    result = shapley_interactions(game, n, pairs, budget=900, random_state=0)
    assert result.pair_list() == pairs
    assert result.sii[0] == result.sii[1] and result.redundancy_gap[0] == result.redundancy_gap[1]
    exact = exact_shapley_interactions(game, n, pairs)
    assert exact.sii[0] == pytest.approx(exact.sii[1])


def test_random_state_kinds_and_determinism():
    n = 9
    game = MLPGame(n, random_state=0)
    pairs = [(0, 5), (1, 6)]
    kwargs = dict(budget=400, border=False)
    a = shapley_interactions(game, n, pairs, random_state=3, **kwargs)
    b = shapley_interactions(game, n, pairs, random_state=3, **kwargs)
    np.testing.assert_array_equal(a.sii, b.sii)
    c = shapley_interactions(game, n, pairs, random_state=np.random.default_rng(3), **kwargs)
    np.testing.assert_array_equal(a.sii, c.sii)
    d1 = shapley_interactions(game, n, pairs, random_state=torch.Generator().manual_seed(1), **kwargs)
    d2 = shapley_interactions(game, n, pairs, random_state=torch.Generator().manual_seed(1), **kwargs)
    np.testing.assert_array_equal(d1.sii, d2.sii)
    with pytest.raises(TypeError, match="random_state"):
        shapley_interactions(game, n, pairs, random_state="seed", **kwargs)


def test_batch_size_does_not_change_the_estimate():
    n = 10
    game = MLPGame(n, random_state=0)
    pairs = cross_modal_pairs([0] * 5 + [1] * 5)
    a = shapley_interactions(game, n, pairs, budget=800, random_state=0, batch_size=1024)
    counter = CountingValueFn(game)
    b = shapley_interactions(counter, n, pairs, budget=800, random_state=0, batch_size=13)
    np.testing.assert_allclose(a.sii, b.sii, atol=1e-12)
    assert counter.max_batch <= 13 and counter.calls == math.ceil(b.evaluations / 13)


def test_approximator_class_and_adaptors():
    shapiq = pytest.importorskip("shapiq")
    n = 8
    game = MLPGame(n, random_state=2)
    approximator = PairInteractionApproximator(n, [(0, 4)], random_state=0)
    result = approximator.approximate(500, game)  # shapiq's call: approximate(budget, game)
    assert repr(approximator) == ("PairInteractionApproximator(n_players=8, pairs=1, batch_size=1024, antithetic=True, "
                                  "border=True, stop_z=None)")
    assert len(result) == 1 and result.evaluations <= 500 and result.budget == 500
    # the same as the function form, and a game of another size is refused
    same = shapley_interactions(game, n, [(0, 4)], budget=500, random_state=0)
    np.testing.assert_array_equal(result.sii, same.sii)
    with pytest.raises(ValueError, match="the game has 9 players, but this approximator was made for n_players=8"):
        approximator.approximate(500, MLPGame(9, random_state=2))
    shapiq_game = to_shapiq_game(game, n)
    assert isinstance(shapiq_game, shapiq.Game)
    back = torch_value_fn(shapiq_game)
    rows = torch.rand(5, n) > 0.5
    np.testing.assert_allclose(back(rows).numpy(), game(rows).numpy(), atol=1e-12)
    np.testing.assert_allclose(numpy_game(game, n)(rows[0].numpy()), game(rows[:1]).numpy(), atol=1e-12)


# ----------------------------------------------------------------------------------------- bad input
def _fn(n: int):
    return MLPGame(n, random_state=0)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([(2, 2)], "different players"),
        ([(0, 9)], "out of range"),
        ([(-1, 3)], "out of range"),
        ([], "empty"),
        ([(0, 1, 2)], "shape"),
        ([(0.5, 1)], "integer"),
    ],
)
def test_bad_pairs(pairs, match):
    with pytest.raises(ValueError, match=match):
        shapley_interactions(_fn(9), 9, pairs, budget=1000, random_state=0)
    with pytest.raises(ValueError, match=match):
        exact_shapley_interactions(_fn(9), 9, pairs)


def test_budget_too_small():
    pairs = cross_modal_pairs([0] * 5 + [1] * 5)
    with pytest.raises(ValueError, match=r"budget=100 is too small.*at least 144"):
        shapley_interactions(_fn(10), 10, pairs, budget=100, random_state=0)
    with pytest.raises(ValueError, match="budget"):
        shapley_interactions(_fn(10), 10, pairs, budget=0, random_state=0)
    with pytest.raises(ValueError, match="batch_size"):
        shapley_interactions(_fn(10), 10, pairs, budget=1000, batch_size=0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda rows: torch.zeros(rows.shape[0], 1), r"shape \(\d+, 1\)"),
        (lambda rows: torch.zeros(rows.shape[0] + 1), "one value per coalition"),
        (lambda rows: torch.full((rows.shape[0],), float("nan")), "NaN"),
    ],
)
def test_bad_value_fn(bad, match):
    with pytest.raises(ValueError, match=match):
        shapley_interactions(bad, 6, [(0, 1)], budget=200, random_state=0)
    with pytest.raises(ValueError, match=match):
        exact_shapley_interactions(bad, 6, [(0, 1)])
    with pytest.raises(TypeError, match="callable"):
        shapley_interactions("not a function", 6, [(0, 1)], budget=200)


def test_exact_refuses_large_games():
    with pytest.raises(ValueError, match=f"n_players <= {MAX_EXACT_PLAYERS}"):
        exact_shapley_interactions(_fn(17), 17, [(0, 1)])
    with pytest.raises(ValueError, match="n_players"):
        exact_shapley_interactions(_fn(3), 1, [(0, 1)])


# ------------------------------------------------------------------------------------------- result
def test_result_json_round_trip_top_k_and_plot():
    n = 10
    result = shapley_interactions(_fn(n), n, cross_modal_pairs([0] * 5 + [1] * 5), budget=900, random_state=0)
    data = json.loads(json.dumps(result.to_dict()))
    back = InteractionResult.from_dict(data)
    for name in ("pairs", "sii", "sii_se", "redundancy_gap", "redundancy_gap_se"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert (back.evaluations, back.budget, back.n_players, back.exact_sizes) == (
        result.evaluations,
        result.budget,
        result.n_players,
        result.exact_sizes,
    )
    top = result.top_k(3, by="redundancy_gap")
    assert len(top) == 3 and np.all(np.diff(top.redundancy_gap) <= 0)
    assert top.redundancy_gap[0] == result.redundancy_gap.max()
    assert result.top_k(2, by="abs_sii").sii.shape == (2,)
    with pytest.raises(ValueError, match="by must be"):
        result.top_k(2, by="shapley")
    with pytest.raises(ValueError, match="missing keys"):
        InteractionResult.from_dict({"pairs": [[0, 1]]})
    from matplotlib.figure import Figure

    fig = result.plot(k=5, player_names=[f"p{i}" for i in range(n)])
    assert isinstance(fig, Figure) and len(fig.axes) == 1


def test_post_stratified_mean_and_fallback(caplog):
    from modeling_fli2moe.explain.shapley import _middle_mean

    n, a = 12, 1
    x = np.array([[1.0, 5.0], [3.0, 7.0], [2.0, 9.0]])
    inside = np.array([[True, True], [True, False], [True, False]])
    with caplog.at_level("WARNING"):
        estimate, se = _middle_mean(x, inside, n, a)
    mass = (n - 1 - 2 * a) / (n - 1)
    assert estimate[0] == pytest.approx(mass * 2.0) and se[0] == pytest.approx(mass * 1.0 / math.sqrt(3))
    ht = (n + 1 - 2 * a) / (n + 1) * np.array([5.0, 0.0, 0.0])  # one unit inside: Horvitz-Thompson
    assert estimate[1] == pytest.approx(ht.mean()) and se[1] == pytest.approx(ht.std(ddof=1) / math.sqrt(3))
    assert "Horvitz-Thompson" in caplog.text


def test_early_stop_ends_when_the_top_pairs_are_resolved():
    n = 20
    game = PlantedGame(n, and_pair=(0, 10), or_pair=(1, 11), random_state=0)
    pairs = cross_modal_pairs([0] * 10 + [1] * 10, players=[0, 1, 2, 3, 10, 11, 12, 13])
    full = PairInteractionApproximator(n, pairs, random_state=3).approximate(4000, game)
    early = PairInteractionApproximator(n, pairs, random_state=3, stop_z=3.0).approximate(4000, game)
    assert early.evaluations < full.evaluations / 2 and early.n_contexts < full.n_contexts
    for result in (full, early):
        assert tuple(result.pairs[np.argmax(result.sii)]) == (0, 10)
        assert tuple(result.pairs[np.argmax(result.redundancy_gap)]) == (1, 11)
    # a stop that never comes spends the plan and gives the same numbers as no stop (same contexts)
    never = PairInteractionApproximator(n, pairs, random_state=3, stop_z=1e9).approximate(4000, game)
    assert never.evaluations == full.evaluations and never.n_contexts == full.n_contexts
    np.testing.assert_allclose(never.sii, full.sii, rtol=0, atol=1e-12)
    np.testing.assert_allclose(never.redundancy_gap_se, full.redundancy_gap_se, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stop_z", [0, -1.0, float("nan"), "3"])
def test_early_stop_rejects_bad_thresholds(stop_z):
    with pytest.raises(ValueError, match="stop_z must be a positive number"):
        PairInteractionApproximator(8, [(0, 4)], stop_z=stop_z)
