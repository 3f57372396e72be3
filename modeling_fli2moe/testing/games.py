"""Small cooperative games with known structure for testing interaction estimators, and adaptors to shapiq.

Every game is a value function: a bool tensor `(k, n_players)` (True = present) to float64 values
`(k,)`, and counts the rows and calls it receives (`evaluations`, `calls`, `max_batch`). Games compute
in numpy (small matrices are far faster there than in multi-threaded torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from modeling_fli2moe.random_state import RandomState, check_random_state

__all__ = [
    "CountingValueFn",
    "MLPGame",
    "MobiusGame",
    "PlantedGame",
    "SumGame",
    "TableGame",
    "numpy_game",
    "random_game",
    "to_shapiq_game",
    "torch_value_fn",
]

MAX_TABLE_PLAYERS = 20


def _as_bool_rows(coalitions: Any, n_players: int) -> torch.Tensor:
    rows = torch.as_tensor(coalitions)
    if rows.dtype != torch.bool:
        raise TypeError(f"coalitions must be boolean (True = present), got dtype {rows.dtype}; use .bool()")
    if rows.dim() == 1:
        rows = rows[None]
    if rows.dim() != 2 or rows.shape[1] != n_players:
        raise ValueError(f"coalitions must have shape (k, {n_players}), got {tuple(rows.shape)}")
    return rows


class _CountingGame:
    """Base: validates input, counts rows and calls, delegates to `_values` (numpy bool -> numpy float)."""

    n_players: int

    def __init__(self, n_players: int) -> None:
        if isinstance(n_players, bool) or not isinstance(n_players, (int, np.integer)) or n_players < 2:
            raise ValueError(f"n_players must be an int >= 2, got {n_players!r}")
        self.n_players = int(n_players)
        self.evaluations = 0
        self.calls = 0
        self.max_batch = 0

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        rows = _as_bool_rows(coalitions, self.n_players)
        self.evaluations += rows.shape[0]
        self.calls += 1
        self.max_batch = max(self.max_batch, rows.shape[0])
        return torch.from_numpy(np.ascontiguousarray(self._values(rows.cpu().numpy()), dtype=np.float64))

    def _values(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset_counts(self) -> None:
        self.evaluations = self.calls = self.max_batch = 0


class TableGame(_CountingGame):
    """A game given by its full value table `(2**n,)`, indexed by bitmask (bit p = player p)."""

    def __init__(self, table: np.ndarray | torch.Tensor) -> None:
        table = np.asarray(table, dtype=np.float64).reshape(-1)
        n = int(round(math.log2(table.size))) if table.size > 0 else 0
        if 2**n != table.size:
            raise ValueError(f"table must have 2**n_players entries, got {table.size}")
        super().__init__(n)
        self.table = table
        self._powers = 2 ** np.arange(n, dtype=np.int64)

    @classmethod
    def random(cls, n_players: int, random_state: RandomState = None) -> TableGame:
        """Independent N(0, 1) values for every coalition (n_players <= 20): no structure at all."""
        if not 2 <= n_players <= MAX_TABLE_PLAYERS:
            raise ValueError(f"n_players must be in [2, {MAX_TABLE_PLAYERS}] for a table game, got {n_players}")
        rng = check_random_state(random_state)
        return cls(rng.standard_normal(2**n_players))

    def _values(self, rows: np.ndarray) -> np.ndarray:
        return self.table[rows.astype(np.int64) @ self._powers]


class MobiusGame(_CountingGame):
    """`v(S) = sum_T m_T [T subset of S]` for a sparse list of Moebius terms (player tuples, coefficients).

    Its SII is known in closed form: `SII(i, j) = sum_{T >= {i, j}} m_T / (|T| - 1)`."""

    def __init__(self, n_players: int, terms: Sequence[Sequence[int]], coefficients: Sequence[float]) -> None:
        super().__init__(n_players)
        if len(terms) != len(coefficients):
            raise ValueError(f"terms ({len(terms)}) and coefficients ({len(coefficients)}) must be aligned")
        self.terms = [tuple(sorted({int(p) for p in t})) for t in terms]
        for t in self.terms:
            if any(not 0 <= p < n_players for p in t):
                raise ValueError(f"term {t} has a player outside [0, {n_players})")
        self.coefficients = np.asarray(list(coefficients), dtype=np.float64)
        self._members = np.zeros((len(self.terms), n_players), dtype=np.float64)
        for r, t in enumerate(self.terms):
            self._members[r, list(t)] = 1.0
        self._sizes = self._members.sum(1)

    @classmethod
    def random(
        cls,
        n_players: int,
        max_order: int = 3,
        terms_per_order: int = 20,
        scale_decay: float = 0.7,
        random_state: RandomState = None,
    ) -> MobiusGame:
        """All singletons plus `terms_per_order` random terms of each order 2..max_order, coefficients
        N(0, scale_decay**(order-1))."""
        rng = check_random_state(random_state)
        terms: list[tuple[int, ...]] = [(p,) for p in range(n_players)]
        coefficients = list(rng.standard_normal(n_players))
        for order in range(2, max_order + 1):
            for _ in range(terms_per_order):
                terms.append(tuple(rng.choice(n_players, size=order, replace=False).tolist()))
                coefficients.append(float(rng.standard_normal() * scale_decay ** (order - 1)))
        return cls(n_players, terms, coefficients)

    def _values(self, rows: np.ndarray) -> np.ndarray:
        hits = rows.astype(np.float64) @ self._members.T  # (k, T): members present
        return (hits == self._sizes).astype(np.float64) @ self.coefficients

    def plus(self, other: MobiusGame, scale: float = 1.0) -> MobiusGame:
        """The Moebius game `self + scale * other` (closed-form SII still available)."""
        if other.n_players != self.n_players:
            raise ValueError(f"cannot add a {other.n_players}-player game to a {self.n_players}-player game")
        return MobiusGame(
            self.n_players, self.terms + other.terms, [*self.coefficients, *(scale * other.coefficients)]
        )

    def exact_sii(self, pairs: Sequence[Sequence[int]]) -> np.ndarray:
        """Closed-form SII of each pair."""
        out = np.zeros(len(pairs))
        for q, (i, j) in enumerate(pairs):
            for t, c in zip(self.terms, self.coefficients):
                if i in t and j in t:
                    out[q] += c / (len(t) - 1)
        return out


class PlantedGame(MobiusGame):
    """An AND pair (worth 1 only together), an OR pair (worth 1 if either is present) and noise players.

    Noise: every other player adds a weight in [-noise_scale, noise_scale] and `n_noise_pairs` random
    pairs of noise players a product term of the same size. Truth: SII(and_pair) = 1, SII(or_pair) = -1,
    RG(or_pair) = 1, RG(and_pair) = 0; other pairs' SII are sums of noise pair terms and their RG are
    mins of noise marginals, so with the defaults the AND pair has the top SII and the OR pair the top RG.
    """

    def __init__(
        self,
        n_players: int,
        and_pair: tuple[int, int] = (0, 1),
        or_pair: tuple[int, int] = (2, 3),
        noise_scale: float = 0.3,
        n_noise_pairs: int = 4,
        random_state: RandomState = None,
    ) -> None:
        planted = {int(p) for p in (*and_pair, *or_pair)}
        if len(planted) != 4 or any(not 0 <= p < n_players for p in planted):
            raise ValueError(
                f"and_pair {and_pair} and or_pair {or_pair} must be four different players in [0, {n_players})"
            )
        if not 0 <= noise_scale < 0.5:
            raise ValueError(
                f"noise_scale must be in [0, 0.5) so that the planted pairs stay on top, got {noise_scale}"
            )
        rng = check_random_state(random_state)
        noise = [p for p in range(n_players) if p not in planted]
        k, l = or_pair
        terms: list[tuple[int, ...]] = [tuple(and_pair), (k,), (l,), (k, l)]
        coefficients: list[float] = [1.0, 1.0, 1.0, -1.0]
        for p in noise:
            terms.append((p,))
            coefficients.append(float(rng.uniform(-noise_scale, noise_scale)))
        if len(noise) >= 2:
            for _ in range(n_noise_pairs):
                terms.append(tuple(rng.choice(noise, size=2, replace=False).tolist()))
                coefficients.append(float(rng.uniform(-noise_scale, noise_scale)))
        super().__init__(n_players, terms, coefficients)
        self.and_pair = (int(and_pair[0]), int(and_pair[1]))
        self.or_pair = (int(k), int(l))


class MLPGame(_CountingGame):
    """A random tanh network on a masked input: `f(x * S + baseline * (1 - S))` (smooth, all orders)."""

    def __init__(self, n_players: int, hidden: int = 32, scale: float = 3.0, random_state: RandomState = None) -> None:
        super().__init__(n_players)
        rng = check_random_state(random_state)
        self.x = rng.standard_normal(n_players)
        self.w1 = rng.standard_normal((n_players, hidden)) * (2.0 / math.sqrt(n_players))
        self.b1 = rng.standard_normal(hidden) * 0.5
        self.w2 = rng.standard_normal(hidden) * (scale / math.sqrt(hidden))

    def _values(self, rows: np.ndarray) -> np.ndarray:
        z = rows * self.x
        return np.tanh(z @ self.w1 + self.b1) @ self.w2


class SumGame(_CountingGame):
    """`sum_g weight_g * game_g(S)` of games over the same players (e.g. a planted game plus smooth noise)."""

    def __init__(self, games: Sequence[_CountingGame], weights: Sequence[float] | None = None) -> None:
        if not games:
            raise ValueError("games is empty; pass at least one game")
        sizes = {g.n_players for g in games}
        if len(sizes) != 1:
            raise ValueError(f"all games must have the same number of players, got {sorted(sizes)}")
        super().__init__(games[0].n_players)
        self.games = list(games)
        self.weights = [1.0] * len(games) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.games):
            raise ValueError(f"weights ({len(self.weights)}) and games ({len(self.games)}) must be aligned")

    def _values(self, rows: np.ndarray) -> np.ndarray:
        return sum(w * g._values(rows) for g, w in zip(self.games, self.weights))


def random_game(kind: str, n_players: int, random_state: RandomState = None) -> _CountingGame:
    """A random game: `"table"` (i.i.d. values), `"mobius"` (sparse orders 1-3), `"mlp"` or `"planted"`."""
    if kind == "table":
        return TableGame.random(n_players, random_state)
    if kind == "mobius":
        return MobiusGame.random(n_players, random_state=random_state)
    if kind == "mlp":
        return MLPGame(n_players, random_state=random_state)
    if kind == "planted":
        return PlantedGame(n_players, random_state=random_state)
    raise ValueError(f"kind must be one of 'table', 'mobius', 'mlp', 'planted', got {kind!r}")


class CountingValueFn:
    """Wraps any value function and counts rows (`evaluations`), `calls` and the largest batch."""

    def __init__(self, value_fn: Callable[[torch.Tensor], Any]) -> None:
        self.value_fn = value_fn
        self.evaluations = 0
        self.calls = 0
        self.max_batch = 0

    def __call__(self, coalitions: torch.Tensor) -> Any:
        self.evaluations += int(coalitions.shape[0])
        self.calls += 1
        self.max_batch = max(self.max_batch, int(coalitions.shape[0]))
        return self.value_fn(coalitions)


# ----------------------------------------------------------------------------------------- adaptors
def numpy_game(value_fn: Callable[[torch.Tensor], Any], n_players: int) -> Callable[[np.ndarray], np.ndarray]:
    """A shapiq-style callable (numpy bool `(k, n)` or `(n,)` -> float64 `(k,)`) from a torch value_fn."""

    def game(coalitions: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if rows.shape[1] != n_players:
            raise ValueError(f"coalitions must have {n_players} columns, got shape {rows.shape}")
        with torch.inference_mode():
            out = value_fn(torch.from_numpy(np.ascontiguousarray(rows)))
        return np.asarray(torch.as_tensor(out).detach().cpu().double().numpy()).reshape(-1)

    return game


def torch_value_fn(game: Callable[[np.ndarray], np.ndarray]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch value_fn from a shapiq-style numpy game (e.g. a `shapiq.Game`)."""

    def value_fn(coalitions: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(game(coalitions.cpu().numpy()), dtype=np.float64))

    return value_fn


def to_shapiq_game(value_fn: Callable[[torch.Tensor], Any], n_players: int) -> Any:
    """A `shapiq.Game` (not normalised) evaluating `value_fn`; needs the optional `shapiq` package."""
    try:
        import shapiq
    except ImportError as err:  # pragma: no cover - shapiq is a test extra
        raise ImportError("to_shapiq_game needs shapiq: pip install 'fl-i2moe[test]' (shapiq==1.4.1)") from err

    fn = numpy_game(value_fn, n_players)

    class _ValueFnGame(shapiq.Game):
        def value_function(self, coalitions: np.ndarray) -> np.ndarray:
            return fn(coalitions)

    return _ValueFnGame(n_players=n_players, normalize=False)
