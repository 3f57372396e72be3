"""The Monte Carlo contexts of the pairwise interaction estimator: which coalitions it evaluates.

A *context* is one random coalition A over all n players, its size t uniform in a..n-a and A uniform among
the t-subsets (see `shapley` for why S = A \\ {i, j} then has the SII distribution). For each context the
estimator needs A, A with each pair player toggled and A with each pair toggled; with `antithetic`, every
A comes with its complement. The outer context sizes |S| < a and |S| > n-2-a (the *border strata*) are
enumerated exactly instead, with `a` chosen from n, the pairs and the budget alone (`ContextPlan.make`).
Rows are packed bit rows (`np.packbits`), so identical rows can be found and evaluated once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ContextPlan", "packed_row_keys", "stratum_rows"]

MAX_BORDER_BYTES = 2**27  # raw bool rows generated at most (bytes) when pricing exact border strata
MAX_IDLE_UNITS = 16  # top-up stops after this many units in a row that need no new coalition


def packed_row_keys(packed: np.ndarray) -> np.ndarray:
    """One hashable (void) key per packed row `(k, bytes)`, for `np.unique` over rows."""
    packed = np.ascontiguousarray(packed)
    return packed.view(np.dtype((np.void, packed.shape[-1]))).reshape(packed.shape[:-1])


def stratum_rows(n: int, pairs: np.ndarray, s: int) -> np.ndarray:
    """Bool rows `(m, K, 4, n)`: for every pair and every s-subset S of N \\ {i, j}, the coalitions
    S, S+i, S+j, S+ij."""
    m = len(pairs)
    combos = np.array(list(itertools.combinations(range(n - 2), s)), dtype=np.int64).reshape(math.comb(n - 2, s), s)
    others = np.ones((m, n), dtype=bool)
    others[np.arange(m), pairs[:, 0]] = False
    others[np.arange(m), pairs[:, 1]] = False
    rest = np.nonzero(others)[1].reshape(m, n - 2)
    base = np.zeros((m, len(combos), n), dtype=bool)
    if s > 0:
        np.put_along_axis(base, rest[:, combos], True, axis=2)
    rows = np.repeat(base[:, :, None, :], 4, axis=2)
    ar = np.arange(m)
    rows[ar, :, 1, pairs[:, 0]] = True
    rows[ar, :, 2, pairs[:, 1]] = True
    rows[ar, :, 3, pairs[:, 0]] = True
    rows[ar, :, 3, pairs[:, 1]] = True
    return rows


def _border_strata(a: int, n: int) -> list[int]:
    """The context sizes enumerated exactly when the outer `a` sizes on each side are exact."""
    return sorted({s for x in range(a) for s in (x, n - 2 - x) if 0 <= s <= n - 2})


def _plan(n: int, pairs: np.ndarray, budget: int, unit: int, border: bool, antithetic: bool) -> tuple[int, int]:
    """Choose `a` (exact strata |S| < a and |S| > n-2-a) and the number of sampled units.

    Minimises the variance proxy weight * middle_mass / units (constant per-sample variance); returns
    (a, units) with units = 0 when everything is exact."""
    n_pair_players = len(np.unique(pairs))
    costs = [0]
    known = np.empty((0,), dtype=np.dtype((np.void, (n + 7) // 8)))
    raw_total = 0
    raw_limit = min(MAX_BORDER_BYTES // n, 8 * budget + 4096)
    a = 0
    while border and 2 * a <= n - 2:
        strata = sorted({a, n - 2 - a})
        raw = 4 * len(pairs) * sum(math.comb(n - 2, s) for s in strata)
        raw_total += raw
        if raw_total > raw_limit:
            break
        rows = np.concatenate([stratum_rows(n, pairs, s).reshape(-1, n) for s in strata])
        known = np.unique(np.concatenate([known, packed_row_keys(np.packbits(rows, axis=1))]))
        if len(known) > budget:
            break
        costs.append(len(known))
        a += 1
    best: tuple[float, int, int] | None = None
    for a, cost in enumerate(costs):
        if 2 * a > n - 2:  # every stratum exact
            return a, 0
        units = (budget - cost) // unit
        if units < 2:
            continue
        proxy = (n + 1 - 2 * a) / (n + 1) * (n - 1 - 2 * a) / (n - 1) / units
        if best is None or proxy < best[0]:
            best = (proxy, a, units)
    if best is None:
        what = "two antithetic pairs of contexts" if antithetic else "two contexts"
        raise ValueError(
            f"budget={budget} is too small: one context for {len(pairs)} pairs over {n_pair_players} players "
            f"costs 1 + {n_pair_players} + {len(pairs)} = {unit // (2 if antithetic else 1)} evaluations and a "
            f"standard error needs {what} ({2 * unit} evaluations); raise budget to at least {2 * unit} "
            "or request fewer pairs"
        )
    return best[1], best[2]


@dataclass(frozen=True)
class ContextPlan:
    """What the estimator evaluates for `pairs` over `n` players: the exact border strata (context sizes
    below `depth` on each side) and `units` sampled units (a context, and its complement when
    `antithetic`). Made by `ContextPlan.make` from the budget, before any value is seen."""

    n: int
    pairs: np.ndarray  # (m, 2) distinct unordered pairs, sorted
    players: np.ndarray  # the players in the pairs, sorted
    antithetic: bool
    depth: int
    units: int

    @classmethod
    def make(cls, n: int, pairs: np.ndarray, budget: int, *, border: bool, antithetic: bool) -> ContextPlan:
        """The plan with the smallest variance proxy whose distinct rows fit in `budget`."""
        players = np.unique(pairs)
        unit = (1 + len(players) + len(pairs)) * (2 if antithetic else 1)
        depth, units = _plan(n, pairs, budget, unit, border, antithetic)
        return cls(n, pairs, players, antithetic, depth, units)

    @property
    def rows_per_context(self) -> int:
        """A, A with each pair player toggled, A with each pair toggled."""
        return 1 + len(self.players) + len(self.pairs)

    @property
    def exact_sizes(self) -> list[int]:
        """The context sizes |S| enumerated exactly."""
        return _border_strata(self.depth, self.n)

    def draw_contexts(self, rng: np.random.Generator, units: int | None = None) -> np.ndarray:
        """Bool contexts `(units, n)`, or `(2 * units, n)` with each complement right after its context
        (`units` defaults to the plan's)."""
        n, a = self.n, self.depth
        units = self.units if units is None else units
        if not units:
            return np.zeros((0, n), dtype=bool)
        t = rng.integers(a, n - a + 1, size=units)
        rank = np.argsort(np.argsort(rng.random((units, n)), axis=1), axis=1)
        contexts = rank < t[:, None]
        if self.antithetic:
            contexts = np.stack([contexts, ~contexts], axis=1).reshape(-1, n)
        return contexts

    def top_up(self, rng: np.random.Generator, contexts: np.ndarray, border_rows: np.ndarray, budget: int) -> np.ndarray:
        """`contexts` and more units, drawn one at a time while the distinct rows of all of them (with the exact
        strata's `border_rows`, packed) still fit in `budget`. The plan prices units without the rows they share
        (a context's rows that another context or an exact stratum also needs), so the budget would otherwise be
        left partly unspent. The number of units then depends on the drawn contexts, never on a value; it stops
        after `MAX_IDLE_UNITS` units in a row that need no new row (every coalition they touch is known)."""
        if not self.units:
            return contexts
        known = {row.tobytes() for block in (border_rows, *self.context_rows(contexts)) for row in block}
        extra, idle = [], 0
        while len(known) < budget and idle < MAX_IDLE_UNITS:  # many units in a row with nothing new: saturated
            unit = self.draw_contexts(rng, 1)
            new = {row.tobytes() for block in self.context_rows(unit) for row in block} - known
            if len(known) + len(new) > budget:
                break
            idle = 0 if new else idle + 1
            known |= new
            extra.append(unit)  # every drawn unit is kept, the free ones too: no selection by what they cost
        return np.concatenate([contexts, *extra]) if extra else contexts

    def context_rows(self, contexts: np.ndarray) -> list[np.ndarray]:
        """Packed rows `(len(contexts) * rows_per_context, bytes)` of the contexts (in blocks): for each
        context A, then A xor {p} for each pair player p, then A xor {i, j} for each pair."""
        n, players, pairs = self.n, self.players, self.pairs
        flips = np.zeros((self.rows_per_context, n), dtype=bool)
        flips[1 + np.arange(len(players)), players] = True
        pair_rows = 1 + len(players) + np.arange(len(pairs))
        flips[pair_rows, pairs[:, 0]] = True
        flips[pair_rows, pairs[:, 1]] = True
        step = max(1, 2**24 // (self.rows_per_context * n))
        blocks = []
        for start in range(0, len(contexts), step):
            rows = contexts[start : start + step, None, :] ^ flips[None]
            blocks.append(np.packbits(rows, axis=-1).reshape(-1, (n + 7) // 8))
        return blocks
