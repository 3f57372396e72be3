"""Pairwise Shapley Interaction Index (SII) and redundancy gap (RG): shared-context Monte Carlo and exact.

For a pair (i, j) and a context S in N \\ {i, j}:

    D_ij(S) = v(S+ij) - v(S+i) - v(S+j) + v(S)          (SII averages D)
    G_ij(S) = min(v(S+i), v(S+j)) - v(S)                 (RG averages G)

both under the SII distribution p(S) = |S|! (n-|S|-2)! / (n-1)!, i.e. the size s uniform in 0..n-2 and
S uniform among the s-subsets of N \\ {i, j}.

The Monte Carlo estimator (`PairInteractionApproximator`, `shapley_interactions`) shares every
evaluation across the requested pairs. A context is ONE random coalition A over all n players with
its size t uniform in 0..n and A uniform among the t-subsets. For every pair, S = A \\ {i, j} then has
exactly the SII distribution: P(S) = sum_k C(2, k) / ((n+1) C(n, |S|+k)) = int_0^1 p^s (1-p)^(n-2-s) dp
= s! (n-2-s)! / (n-1)! (A is "each player present with probability p, p ~ U(0, 1)"). The four
coalitions of pair (i, j) are A with i and/or j toggled, so one context costs only
1 + |players in pairs| + |pairs| rows (A, A xor {i}, A xor {i, j}) instead of 4 per pair. Two
variance reductions keep the estimate unbiased:

* antithetic contexts: each A is paired with its complement N \\ A (same distribution), which cancels
  the part of D and G that is linear in the context (order-3 Moebius terms exactly);
* exact border strata (as shapiq's border trick): the strata |S| < a and |S| > n-2-a, whose per-set
  weights are the largest, are enumerated exactly when that lowers the expected error (the choice of
  a depends only on n, the pairs and the budget). The middle strata are sampled with t uniform in
  a..n-a, which gives every middle set the probability p(S) (n+1) / (n+1-2a): conditional on landing
  in the middle, S has exactly the SII distribution restricted to the middle. The sampled part is
  therefore post-stratified: (middle mass (n-1-2a)/(n-1)) x (mean of D over the units that landed in
  the middle), unbiased given at least one such unit (for a = 0 every unit does; with exact strata a
  unit misses the middle with a small probability, about 4/n**2 for a = 1).

The contexts and the coalition rows they need come from `sampling` (`ContextPlan`); this module
evaluates the rows and turns their values into the estimates.

The number of contexts is fixed before sampling (from the undeduplicated cost), so it never depends
on the sampled coalitions; identical rows are evaluated once, hence `evaluations <= budget`. The
standard error is the middle mass times the sample standard deviation of the per-unit values (a
unit = a context and its complement) over sqrt(#units that landed in the middle).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..random_state import RandomState, check_random_state
from ._utils import check_int
from .results import InteractionResult
from .sampling import ContextPlan, packed_row_keys, stratum_rows

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_EXACT_PLAYERS",
    "PairInteractionApproximator",
    "ValueFn",
    "cross_modal_pairs",
    "exact_shapley_interactions",
    "shapley_interactions",
    "sii_weights",
]

ValueFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a bool tensor `(k, n_players)` (True = present) to float values `(k,)`."""

MAX_EXACT_PLAYERS = 16
_FEW_UNITS = 10


# ------------------------------------------------------------------------------------------ validation
def _check_pairs(pairs: Any, n_players: int) -> np.ndarray:
    """`(m, 2)` int64 array of the requested pairs; clear errors for anything else."""
    if torch.is_tensor(pairs):
        pairs = pairs.detach().cpu().numpy()
    try:
        arr = np.asarray(pairs)
    except (TypeError, ValueError) as err:  # ragged input
        raise ValueError(f"pairs must be a sequence of (i, j) player index pairs, got {pairs!r}") from err
    if arr.size == 0:
        raise ValueError("pairs is empty; pass at least one (i, j) pair of player indices")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs must have shape (m, 2): a list of (i, j) tuples, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"pairs must hold integer player indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0).any(1) | (arr >= n_players).any(1))
    if bad.size:
        i, j = arr[bad[0]]
        raise ValueError(
            f"pair {bad[0]} = ({i}, {j}) has a player index out of range; indices must be in [0, {n_players})"
        )
    same = np.flatnonzero(arr[:, 0] == arr[:, 1])
    if same.size:
        i = arr[same[0], 0]
        raise ValueError(f"pair {same[0]} = ({i}, {i}) repeats one player; a pair needs two different players i != j")
    return arr


def _as_values(out: Any, k: int) -> np.ndarray:
    """Validate one value_fn output for `k` coalitions and return float64 numpy `(k,)`."""
    if torch.is_tensor(out):
        arr = out.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"value_fn must return a float tensor of shape ({k},), got {type(out).__name__}"
            ) from err
    if arr.shape != (k,):
        raise ValueError(
            f"value_fn returned shape {tuple(arr.shape)} for {k} coalitions; it must return one value per "
            f"coalition, shape ({k},) (e.g. squeeze a trailing dimension)"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("value_fn returned NaN or inf; the game's values must be finite")
    return arr


def sii_weights(n_players: int) -> np.ndarray:
    """SII weights `(n-1,)`: `w[s] = s! (n-s-2)! / (n-1)!`, the probability of one context of size s."""
    s = np.arange(n_players - 1, dtype=np.float64)
    log_w = np.array([math.lgamma(x + 1) + math.lgamma(n_players - x - 1) for x in s]) - math.lgamma(n_players)
    return np.exp(log_w)


def cross_modal_pairs(
    modality_of_player: Sequence[int] | torch.Tensor, players: Sequence[int] | None = None
) -> np.ndarray:
    """All pairs `(m, 2)` (i < j) of `players` (default: all) whose modalities differ."""
    modality = np.asarray(torch.as_tensor(modality_of_player).cpu(), dtype=np.int64).reshape(-1)
    chosen = np.arange(modality.size) if players is None else np.unique(np.asarray(players, dtype=np.int64))
    i, j = np.triu_indices(chosen.size, k=1)
    keep = modality[chosen[i]] != modality[chosen[j]]
    return np.stack([chosen[i][keep], chosen[j][keep]], axis=1)


# ------------------------------------------------------------------------------------- evaluation
class _Evaluator:
    """Calls `value_fn` on packed coalition rows in chunks of `batch_size` and counts the rows."""

    def __init__(self, value_fn: ValueFn, n_players: int, batch_size: int) -> None:
        if not callable(value_fn):
            raise TypeError(
                f"value_fn must be callable (bool tensor (k, n_players) -> (k,)), got {type(value_fn).__name__}"
            )
        self.value_fn = value_fn
        self.n_players = n_players
        self.batch_size = batch_size
        self.evaluations = 0
        self.calls = 0

    def __call__(self, packed_unique: np.ndarray) -> np.ndarray:
        out = np.empty(len(packed_unique), dtype=np.float64)
        for start in range(0, len(packed_unique), self.batch_size):
            chunk = packed_unique[start : start + self.batch_size]
            rows = np.unpackbits(chunk, axis=1, count=self.n_players).astype(bool)
            with torch.inference_mode():
                values = self.value_fn(torch.from_numpy(rows))
            out[start : start + len(chunk)] = _as_values(values, len(chunk))
            self.evaluations += len(chunk)
            self.calls += 1
        return out


def _middle_mean(x: np.ndarray, inside: np.ndarray, n: int, a: int) -> tuple[np.ndarray, np.ndarray]:
    """Estimate and standard error of the sampled strata a..n-2-a from per-unit values `x` `(U, ...)`.

    Post-stratified: units whose context size falls in the middle are i.i.d. draws of the SII
    distribution restricted to the middle, so mass * (their mean) is unbiased given at least one of
    them. A pair with fewer than two such units (rare; only with exact strata) falls back to the
    Horvitz-Thompson mean over all units, weight (n+1-2a)/(n+1) inside and 0 outside."""
    mass = (n - 1 - 2 * a) / (n - 1)
    count = inside.sum(0)
    safe = np.maximum(count, 1)
    mean = np.where(inside, x, 0.0).sum(0) / safe
    var = np.where(inside, (x - mean) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
    estimate = mass * mean
    se = mass * np.sqrt(var / safe)
    few = np.broadcast_to(count < 2, estimate.shape)
    if few.any():
        logger.warning(
            "%d estimate(s) had fewer than 2 sampled contexts in the middle strata; using the Horvitz-Thompson "
            "estimate for them",
            int(few.sum()),
        )
        ht = (n + 1 - 2 * a) / (n + 1) * np.where(inside, x, 0.0)
        estimate = np.where(few, ht.mean(0), estimate)
        se = np.where(few, ht.std(0, ddof=1) / math.sqrt(len(x)), se)
    return estimate, se


# ----------------------------------------------------------------------------------- approximator
class PairInteractionApproximator:
    """Shared-context Monte Carlo for the SII and redundancy gap of many pairs (see the module docstring).

    As shapiq's approximators: made for the players and the interactions to estimate, then called as
    `approximate(budget, game)`.

    Args:
        n_players: players in the game.
        pairs: `(m, 2)` the pairs of player indices to estimate, in the order the result gives them.
        random_state: int, numpy Generator, torch.Generator or None.
        batch_size: rows per call of the game.
        antithetic: pair every sampled context with its complement.
        border: enumerate the outer context sizes exactly when that is cheaper than sampling them.
        stop_z: stop sampling early once the top pair by SII and the top pair by RG each lead the runner-up by
            `stop_z` standard errors of the difference (a normal quantile, taken as the Student t quantile of the
            units' degrees of freedom), or no pair's score is `stop_z` standard errors above zero (checked after
            `min_units` sampled units, then every `round_units`); None spends the whole budget. The contexts are drawn before any value is seen, so an
            early stop evaluates a prefix of them.
        min_units, round_units: see `stop_z`.
    """

    def __init__(
        self,
        n_players: int,
        pairs: Any,
        *,
        random_state: RandomState = None,
        batch_size: int = 1024,
        antithetic: bool = True,
        border: bool = True,
        stop_z: float | None = None,
        min_units: int = 4,
        round_units: int = 2,
    ) -> None:
        self.n_players = check_int("n_players", n_players, 2)
        self.pairs = _check_pairs(pairs, self.n_players)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.random_state = random_state
        self.antithetic = bool(antithetic)
        self.border = bool(border)
        if stop_z is not None and not (isinstance(stop_z, (int, float)) and math.isfinite(stop_z) and stop_z > 0):
            raise ValueError(f"stop_z must be a positive number of standard errors or None, got {stop_z!r}")
        self.stop_z = None if stop_z is None else float(stop_z)
        self.min_units = check_int("min_units", min_units, 2)
        self.round_units = check_int("round_units", round_units, 1)

    def __repr__(self) -> str:
        return (
            f"PairInteractionApproximator(n_players={self.n_players}, pairs={len(self.pairs)}, "
            f"batch_size={self.batch_size}, antithetic={self.antithetic}, border={self.border}, stop_z={self.stop_z})"
        )

    def approximate(self, budget: int, game: ValueFn) -> InteractionResult:
        """Estimate SII and RG (with standard errors) of every pair, with at most `budget` rows passed to
        `game` (a bool tensor `(k, n_players)` -> values `(k,)`; identical rows are evaluated once)."""
        budget = check_int("budget", budget, 1)
        n = self.n_players
        if getattr(game, "n_players", n) != n:
            raise ValueError(
                f"the game has {game.n_players} players, but this approximator was made for n_players={n}"
            )
        requested = self.pairs
        rng = check_random_state(self.random_state)
        evaluator = _Evaluator(game, n, self.batch_size)

        # unordered unique pairs drive the rows; results are mapped back to the requested order
        unique_pairs, back = np.unique(np.sort(requested, axis=1), axis=0, return_inverse=True)
        back = back.reshape(-1)
        m = len(unique_pairs)
        plan = ContextPlan.make(n, unique_pairs, budget, border=self.border, antithetic=self.antithetic)
        units, players, rows_per_context = plan.units, plan.players, plan.rows_per_context
        exact_sizes = plan.exact_sizes
        if 0 < units < _FEW_UNITS:
            logger.warning(
                "budget=%d leaves only %d sampled units for %d pairs; their standard errors are rough "
                "(raise budget or request fewer pairs)", budget, units, m,
            )
        logger.debug(
            "SII plan: n=%d, %d pairs over %d players, %d rows/context, exact sizes %s, %d units",
            n, m, len(players), rows_per_context, exact_sizes, units,
        )

        # ---- rows: exact strata, then the sampled contexts (evaluated in rounds when stopping early)
        border: list[np.ndarray] = []
        stratum_shapes: list[tuple[int, int]] = []
        for s in exact_sizes:
            rows = stratum_rows(n, unique_pairs, s)
            stratum_shapes.append((s, rows.shape[1]))
            border.append(np.packbits(rows, axis=-1).reshape(-1, (n + 7) // 8))
        border_rows = np.concatenate(border) if border else np.zeros((0, (n + 7) // 8), dtype=np.uint8)
        contexts = plan.top_up(rng, plan.draw_contexts(rng), border_rows, budget)
        per_unit = 2 if self.antithetic else 1
        units = len(contexts) // per_unit
        rounds = [units]
        if self.stop_z is not None and units > self.min_units:
            rounds = list(range(self.min_units, units, self.round_units)) + [units]
        values = _RowValues(evaluator)
        done, parts = 0, []
        for first, done in zip([0, *rounds], rounds):  # one call of the game per round: the border, then new units
            new = plan.context_rows(contexts[per_unit * first : per_unit * done])
            row_values = values(np.concatenate([border_rows, *new] if first == 0 else new))
            if first == 0:
                border_values, row_values = row_values[: len(border_rows)], row_values[len(border_rows) :]
            parts.append(row_values)
            sampled, sampled_values = contexts[: per_unit * done], np.concatenate(parts)
            estimate = self._estimate(plan, unique_pairs, stratum_shapes, border_values, sampled, sampled_values)
            if done < units and _top_resolved(estimate, self.stop_z, done):
                logger.debug("SII: top pairs resolved after %d of %d units", done, units)
                break
        if values.evaluated > budget:  # cannot happen by construction; guard the promise anyway
            raise RuntimeError(f"internal error: {values.evaluated} distinct rows exceed budget={budget}")
        sii, sii_se, rg, rg_se = estimate
        n_contexts = per_unit * done

        logger.debug("SII done: %d evaluations in %d calls", evaluator.evaluations, evaluator.calls)
        return InteractionResult(
            pairs=requested,
            sii=sii[back],
            sii_se=sii_se[back],
            redundancy_gap=rg[back],
            redundancy_gap_se=rg_se[back],
            evaluations=evaluator.evaluations,
            n_players=n,
            budget=budget,
            method="monte_carlo" if units else "exact",
            n_contexts=n_contexts,
            exact_sizes=exact_sizes,
        )

    def _estimate(self, plan: ContextPlan, pairs: np.ndarray, stratum_shapes: list[tuple[int, int]],
                  border_values: np.ndarray, contexts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
        """SII, its standard error, RG and its standard error of every pair, from the exact strata's values and
        the values of the sampled contexts' rows (in `plan.context_rows` order)."""
        n, a, m = self.n_players, plan.depth, len(pairs)
        weights = sii_weights(n)
        sii = np.zeros(m)
        rg = np.zeros(m)
        offset = 0
        for s, k in stratum_shapes:
            v = border_values[offset : offset + m * k * 4].reshape(m, k, 4)
            offset += m * k * 4
            sii += weights[s] * (v[..., 3] - v[..., 1] - v[..., 2] + v[..., 0]).sum(1)
            rg += weights[s] * (np.minimum(v[..., 1], v[..., 2]) - v[..., 0]).sum(1)
        sii_se = np.zeros(m)
        rg_se = np.zeros(m)
        if len(contexts):
            players = plan.players
            units = len(contexts) // (2 if self.antithetic else 1)
            v = values.reshape(len(contexts), plan.rows_per_context)
            col_i = 1 + np.searchsorted(players, pairs[:, 0])
            col_j = 1 + np.searchsorted(players, pairs[:, 1])
            col_ij = 1 + len(players) + np.arange(m)
            # v4[..., code]: the row A xor Y with Y = {i if code & 1} | {j if code & 2}
            v4 = np.stack([np.broadcast_to(v[:, :1], (len(v), m)), v[:, col_i], v[:, col_j], v[:, col_ij]], axis=-1)
            ai = contexts[:, pairs[:, 0]].astype(np.int64)
            aj = contexts[:, pairs[:, 1]].astype(np.int64)

            def pick(code: np.ndarray) -> np.ndarray:
                return np.take_along_axis(v4, code[..., None], axis=-1)[..., 0]

            v_s = pick(ai + 2 * aj)  # S = A \ {i, j}
            v_si = pick((1 - ai) + 2 * aj)
            v_sj = pick(ai + 2 * (1 - aj))
            v_sij = pick((1 - ai) + 2 * (1 - aj))
            size = contexts.sum(1, keepdims=True) - ai - aj
            inside = (size >= a) & (size <= n - 2 - a)  # sizes of the exact strata are not re-sampled
            d = v_sij - v_si - v_sj + v_s
            g = np.minimum(v_si, v_sj) - v_s
            if self.antithetic:  # |S(N \ A)| = n - 2 - |S(A)|: a unit is inside or outside as a whole
                d = d.reshape(units, 2, m).mean(1)
                g = g.reshape(units, 2, m).mean(1)
                inside = inside.reshape(units, 2, m)[:, 0]
            mean, se = _middle_mean(np.stack([d, g], axis=-1), inside[..., None], n, a)
            sii += mean[:, 0]
            rg += mean[:, 1]
            sii_se, rg_se = se[:, 0], se[:, 1]
        return sii, sii_se, rg, rg_se


def _top_resolved(estimate: tuple[np.ndarray, ...], z: float, units: int) -> bool:
    """True when, for SII and for RG, the top pair leads the runner-up by `z` standard errors of their difference
    (as a Student t quantile for the `units - 1` degrees of freedom of the errors: few units need a larger lead),
    or no pair is `z` standard errors above zero (there is no positive top pair to tell apart)."""
    from scipy.stats import norm, t

    lead = float(t.ppf(norm.cdf(z), max(units - 1, 1)))
    sii, sii_se, rg, rg_se = estimate
    for value, se in ((sii, sii_se), (rg, rg_se)):
        if len(value) < 2 or not np.any(value > z * se):
            continue
        first, second = np.argsort(-value, kind="stable")[:2]
        if value[first] - value[second] < lead * math.hypot(se[first], se[second]):
            return False
    return True


class _RowValues:
    """Values of packed coalition rows, each distinct row evaluated once across calls."""

    def __init__(self, evaluator: _Evaluator) -> None:
        self.evaluator = evaluator
        self.known: dict[bytes, float] = {}

    @property
    def evaluated(self) -> int:
        return len(self.known)

    def __call__(self, packed: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(packed_row_keys(packed), return_inverse=True)
        rows = uniq.view(np.uint8).reshape(len(uniq), -1)
        keys = [r.tobytes() for r in rows]
        new = [i for i, key in enumerate(keys) if key not in self.known]
        if new:
            for key, value in zip((keys[i] for i in new), self.evaluator(rows[new])):
                self.known[key] = float(value)
        return np.array([self.known[key] for key in keys], dtype=np.float64)[inverse.reshape(-1)]


def shapley_interactions(
    value_fn: ValueFn, n_players: int, pairs: Any, budget: int, random_state: RandomState = None,
    batch_size: int = 1024, **options: bool,
) -> InteractionResult:
    """Unbiased Monte Carlo SII and redundancy gap of `pairs`, sharing evaluations across pairs: the
    function form of `PairInteractionApproximator(n_players, pairs, ...).approximate(budget, value_fn)`.

    See the module docstring for the sampling scheme; `options` (keyword only: `antithetic`, `border`) and
    the rest as for `PairInteractionApproximator`."""
    approximator = PairInteractionApproximator(
        n_players, pairs, random_state=random_state, batch_size=batch_size, **options
    )
    return approximator.approximate(budget, value_fn)


def exact_shapley_interactions(
    value_fn: ValueFn, n_players: int, pairs: Any, batch_size: int = 1024
) -> InteractionResult:
    """Exact SII and redundancy gap of `pairs` by evaluating all `2**n_players` coalitions (n <= 16)."""
    n = check_int("n_players", n_players, 2)
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact enumeration needs 2**n_players = 2**{n} evaluations; it is limited to "
            f"n_players <= {MAX_EXACT_PLAYERS}. Use shapley_interactions(...) with a budget instead"
        )
    requested = _check_pairs(pairs, n)
    batch_size = check_int("batch_size", batch_size, 1)
    evaluator = _Evaluator(value_fn, n, batch_size)
    masks = np.arange(2**n, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)  # row r = coalition with bitmask r
    values = evaluator(np.packbits(bits, axis=1))
    size = bits.sum(1)
    weights = sii_weights(n)
    i, j = requested[:, 0], requested[:, 1]
    bi, bj = np.int64(1) << i, np.int64(1) << j
    contexts = np.stack([masks[~bits[:, a] & ~bits[:, b]] for a, b in requested])  # (m, 2**(n-2))
    w = weights[size[contexts]]
    v_s = values[contexts]
    v_si = values[contexts | bi[:, None]]
    v_sj = values[contexts | bj[:, None]]
    v_sij = values[contexts | (bi | bj)[:, None]]
    sii = (w * (v_sij - v_si - v_sj + v_s)).sum(1)
    rg = (w * (np.minimum(v_si, v_sj) - v_s)).sum(1)
    zeros = np.zeros(len(requested))
    return InteractionResult(
        pairs=requested,
        sii=sii,
        sii_se=zeros,
        redundancy_gap=rg,
        redundancy_gap_se=zeros.copy(),
        evaluations=evaluator.evaluations,
        n_players=n,
        budget=2**n,
        method="exact",
        n_contexts=0,
        exact_sizes=list(range(n - 1)),
    )
