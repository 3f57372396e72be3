"""`InteractionResult`: pairwise Shapley interactions and redundancy gaps with standard errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InteractionResult"]

_RANK_KEYS = ("sii", "redundancy_gap", "abs_sii")
_ARRAY_FIELDS = ("sii", "sii_se", "redundancy_gap", "redundancy_gap_se")


@dataclass
class InteractionResult:
    """Per-pair Shapley Interaction Index (SII) and redundancy gap (RG), aligned with `pairs`.

    Attributes:
        pairs: `(m, 2)` int player indices, in the order they were requested.
        sii, sii_se: `(m,)` SII estimates and their standard errors (0 where computed exactly).
        redundancy_gap, redundancy_gap_se: `(m,)` RG estimates and their standard errors.
        evaluations: rows passed to the value function (never above `budget`).
        n_players: players in the game.
        budget: the evaluation budget the estimate was allowed (`2**n_players` for exact enumeration).
        method: `"monte_carlo"` or `"exact"`.
        n_contexts: sampled contexts (0 when exact).
        exact_sizes: context sizes |S| whose strata were enumerated exactly rather than sampled.
    """

    pairs: np.ndarray
    sii: np.ndarray
    sii_se: np.ndarray
    redundancy_gap: np.ndarray
    redundancy_gap_se: np.ndarray
    evaluations: int
    n_players: int
    budget: int
    method: str = "monte_carlo"
    n_contexts: int = 0
    exact_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        m = len(self.pairs)
        for name in _ARRAY_FIELDS:
            value = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if value.shape != (m,):
                raise ValueError(f"{name} has {value.size} entries but there are {m} pairs; they must be aligned")
            setattr(self, name, value)
        self.evaluations = int(self.evaluations)
        self.n_players = int(self.n_players)
        self.budget = int(self.budget)
        self.n_contexts = int(self.n_contexts)
        self.exact_sizes = [int(s) for s in self.exact_sizes]

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (
            f"InteractionResult(method={self.method!r}, pairs={len(self)}, n_players={self.n_players}, "
            f"evaluations={self.evaluations}/{self.budget}, n_contexts={self.n_contexts})"
        )

    # ----------------------------------------------------------------------------- selection
    def subset(self, index: Sequence[int] | np.ndarray) -> InteractionResult:
        """A new result with the pairs at `index` (in that order); totals are kept."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        return InteractionResult(
            pairs=self.pairs[index],
            sii=self.sii[index],
            sii_se=self.sii_se[index],
            redundancy_gap=self.redundancy_gap[index],
            redundancy_gap_se=self.redundancy_gap_se[index],
            evaluations=self.evaluations,
            n_players=self.n_players,
            budget=self.budget,
            method=self.method,
            n_contexts=self.n_contexts,
            exact_sizes=list(self.exact_sizes),
        )

    def top_k(self, k: int, by: str = "sii") -> InteractionResult:
        """The `k` pairs with the largest `by` (`"sii"`, `"redundancy_gap"` or `"abs_sii"`), best first."""
        if by not in _RANK_KEYS:
            raise ValueError(f"by must be one of {list(_RANK_KEYS)}, got {by!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise ValueError(f"k must be a non-negative int, got {k!r}")
        score = np.abs(self.sii) if by == "abs_sii" else getattr(self, by)
        order = np.argsort(-score, kind="stable")[: int(k)]
        return self.subset(order)

    def pair_list(self) -> list[tuple[int, int]]:
        """The pairs as a list of `(i, j)` tuples."""
        return [(int(i), int(j)) for i, j in self.pairs]

    # --------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists of Python numbers)."""
        out: dict[str, Any] = {
            "pairs": self.pairs.tolist(),
            "evaluations": self.evaluations,
            "n_players": self.n_players,
            "budget": self.budget,
            "method": self.method,
            "n_contexts": self.n_contexts,
            "exact_sizes": list(self.exact_sizes),
        }
        for name in _ARRAY_FIELDS:
            out[name] = [float(v) for v in getattr(self, name)]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InteractionResult:
        """Inverse of `to_dict`."""
        missing = [k for k in ("pairs", *_ARRAY_FIELDS, "evaluations", "n_players", "budget") if k not in data]
        if missing:
            raise ValueError(f"not an InteractionResult dict: missing keys {missing}")
        return cls(
            pairs=np.asarray(data["pairs"], dtype=np.int64).reshape(-1, 2),
            sii=data["sii"],
            sii_se=data["sii_se"],
            redundancy_gap=data["redundancy_gap"],
            redundancy_gap_se=data["redundancy_gap_se"],
            evaluations=data["evaluations"],
            n_players=data["n_players"],
            budget=data["budget"],
            method=data.get("method", "monte_carlo"),
            n_contexts=data.get("n_contexts", 0),
            exact_sizes=data.get("exact_sizes", []),
        )

    # --------------------------------------------------------------------------------- plot
    def plot(
        self,
        by: str = "sii",
        k: int | None = 10,
        player_names: Sequence[str] | None = None,
        ax: Any = None,
    ) -> Any:
        """Bar chart of SII and RG (error bars = 1.96 standard errors) for the top `k` pairs by `by`.

        Returns the matplotlib Figure (drawn into `ax` when given)."""
        from matplotlib.figure import Figure

        shown = self.top_k(len(self) if k is None else k, by=by)
        if player_names is not None and len(player_names) < self.n_players:
            raise ValueError(f"player_names has {len(player_names)} names but the game has {self.n_players} players")
        names = [str(p) for p in range(self.n_players)] if player_names is None else [str(p) for p in player_names]
        labels = [f"{names[i]} × {names[j]}" for i, j in shown.pairs]
        if ax is None:
            fig = Figure(figsize=(max(4.0, 0.6 * len(shown) + 2.0), 3.5), layout="constrained")
            ax = fig.add_subplot(1, 1, 1)
        else:
            fig = ax.figure
        x = np.arange(len(shown))
        width = 0.4
        ax.bar(x - width / 2, shown.sii, width, yerr=1.96 * shown.sii_se, capsize=3, label="SII (synergy)")
        ax.bar(
            x + width / 2,
            shown.redundancy_gap,
            width,
            yerr=1.96 * shown.redundancy_gap_se,
            capsize=3,
            label="redundancy gap",
        )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, labels, rotation=45, ha="right")
        ax.set_ylabel("value (± 1.96 SE)")
        ax.set_title(f"top {len(shown)} pairs by {by} ({self.method}, {self.evaluations} evaluations)")
        ax.legend(loc="best", fontsize="small")
        return fig
