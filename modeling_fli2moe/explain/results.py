"""What the explanation layer returns: every result type, with its JSON, top-k and plot methods.

The modules that compute these import them from here; this module imports nothing else of the package.

- `AttributionMaps`: token-importance maps per head (`attribution`).
- `OcclusionEffects`: first-order removal and inclusion effects per player (`occlusion`).
- `InteractionResult`: pairwise SII and redundancy gaps with standard errors (`shapley`).
- `FaithfulnessCurve`, `FaithfulnessResult`, `ConcentrationResult`, `SpecificityResult` (`faithfulness`).
- `PairMaskingStep`, `PairMaskingResult` (`pair_masking`).
- `CueDecodability`, `MaskingSurvival` (`leakage`).
- `InteractionPair`, `Explanation`: one example explained (`explainer`), saved as JSON and drawn as pictures.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "SPECIAL_TOKENS",
    "AttributionMaps",
    "ConcentrationResult",
    "CueDecodability",
    "Explanation",
    "FaithfulnessCurve",
    "FaithfulnessResult",
    "InteractionPair",
    "InteractionResult",
    "MaskingSurvival",
    "OcclusionEffects",
    "PairMaskingResult",
    "PairMaskingStep",
    "SpecificityResult",
    "grid_shape",
    "shown_tokens",
]

#: tokens that carry no content (padding and the tokenizers' sequence markers): never drawn
SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"})


def shown_tokens(tokens: list[str], scores: Any) -> list[tuple[int, str, float]]:
    """`(position, token, score)` of the tokens worth drawing: every token but padding and sequence markers
    (`SPECIAL_TOKENS`), with its score from `scores` (aligned with `tokens`)."""
    return [(i, tok, float(s)) for i, (tok, s) in enumerate(zip(tokens, scores)) if tok not in SPECIAL_TOKENS]


def grid_shape(n_tokens: int) -> list[int]:
    """A square grid for image-like token sequences (49 -> 7x7, 196 -> 14x14)."""
    side = int(round(math.sqrt(n_tokens)))
    return [side, side] if side * side == n_tokens else [1, n_tokens]


# ----------------------------------------------------------------------------- attribution maps
@dataclass
class AttributionMaps:
    """Token-importance maps `maps[head][modality] -> (T_m,)` (zero at non-players) of one example.

    `player_mask[modality] -> (T_m,)` bool marks the players; `targets[head]` the labels each head's
    map explains; `expert_weights[expert]` the router weights of the example.
    """

    method: str
    maps: dict[str, dict[str, torch.Tensor]]
    player_mask: dict[str, torch.Tensor]
    targets: dict[str, list[int]] = field(default_factory=dict)
    expert_weights: dict[str, float] = field(default_factory=dict)

    @property
    def heads(self) -> list[str]:
        return list(self.maps)

    @property
    def modalities(self) -> list[str]:
        return list(self.player_mask)

    def __getitem__(self, head: str) -> dict[str, torch.Tensor]:
        if head not in self.maps:
            raise KeyError(f"no map for head {head!r}; this result has {self.heads}")
        return self.maps[head]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON-ready; `maps` has the layout of `Explanation.maps`)."""
        return {
            "method": self.method,
            "maps": {h: {m: [float(v) for v in t.tolist()] for m, t in by_mod.items()} for h, by_mod in self.maps.items()},
            "player_mask": {m: [bool(v) for v in t.tolist()] for m, t in self.player_mask.items()},
            "targets": {h: list(t) for h, t in self.targets.items()},
            "expert_weights": dict(self.expert_weights),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttributionMaps:
        return cls(
            method=data["method"],
            maps={h: {m: torch.tensor(v, dtype=torch.float32) for m, v in by_mod.items()} for h, by_mod in data["maps"].items()},
            player_mask={m: torch.tensor(v, dtype=torch.bool) for m, v in data["player_mask"].items()},
            targets={h: [int(x) for x in t] for h, t in data.get("targets", {}).items()},
            expert_weights={k: float(v) for k, v in data.get("expert_weights", {}).items()},
        )


# ------------------------------------------------------------------------------------ occlusion
@dataclass
class OcclusionEffects:
    """Per-player effects `(n_players,)` of one game.

    Attributes:
        removal: `v(N) - v(N \\ {i})`, the drop when player i alone is masked.
        inclusion: `v({i}) - v(empty)`, the gain when player i alone is present.
        evaluations: coalitions evaluated.
    """

    removal: torch.Tensor
    inclusion: torch.Tensor
    evaluations: int

    @property
    def value(self) -> torch.Tensor:
        """Signed first-order importance: the mean of the two effects."""
        return (self.removal + self.inclusion) / 2

    @property
    def score(self) -> torch.Tensor:
        """Unsigned size of the player's effect at either end: `|removal| + |inclusion|`."""
        return self.removal.abs() + self.inclusion.abs()


# ------------------------------------------------------------------------ pairwise interactions
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


# ----------------------------------------------------------------------------------------- faithfulness
@dataclass
class FaithfulnessCurve:
    """Faithfulness of one map on one modality (or ``"all"``); lists are aligned with `k_percent`."""

    k_percent: list[float]
    n_tokens: list[int]
    n_players: int
    comprehensiveness: list[float]
    sufficiency: list[float]
    random_comprehensiveness: list[float]
    random_sufficiency: list[float]
    random_comprehensiveness_std: list[float]
    random_sufficiency_std: list[float]
    aopc_comprehensiveness: float
    aopc_sufficiency: float
    random_aopc_comprehensiveness: float
    random_aopc_sufficiency: float
    comprehensiveness_gap: float
    sufficiency_gap: float


@dataclass
class FaithfulnessResult:
    """Top-K% masking of one example, one head and one map. `per_modality[name]` (plus ``"all"``)."""

    head: str
    output: str
    fill: str
    p_full: float
    n_random: int
    evaluations: int
    per_modality: dict[str, FaithfulnessCurve] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain types; `per_modality[m]` has the keys `Explanation.plot_faithfulness` reads."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaithfulnessResult:
        data = dict(data)
        data["per_modality"] = {m: FaithfulnessCurve(**c) for m, c in data.get("per_modality", {}).items()}
        return cls(**data)


# ---------------------------------------------------------------------------------------- concentration
@dataclass
class ConcentrationResult:
    """Normalised entropy (1 = uniform, 0 = one token) and top-fraction mass of a map, per modality and
    over all players (``"all"``)."""

    top_fraction: float
    entropy: dict[str, float]
    top_mass: dict[str, float]
    n_players: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------- specificity
@dataclass
class SpecificityResult:
    """How expert-specific a set of maps is.

    `mass_share[head][modality]`: the head's share of its total mass on that modality.
    `jaccard[modality][head_a][head_b]`: overlap of the heads' top-K% player sets (``"all"`` = players of
    every modality ranked jointly). `mean_jaccard[modality]`: mean over distinct pairs of experts (the
    mixture excluded); lower = more specific.
    """

    k_percent: float
    heads: list[str]
    mass_share: dict[str, dict[str, float]]
    jaccard: dict[str, dict[str, dict[str, float]]]
    mean_jaccard: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------- pair masking
@dataclass
class PairMaskingStep:
    """One number of pairs B: the ranked pairs' drop and the random control's drops.

    `budget` is B, the number of pairs masked (the field keeps its name in saved explanations)."""

    budget: int
    pairs: list[list[int]]
    n_tokens: int
    ranked_drop: float
    random_drops: list[float]
    random_mean: float
    random_std: float
    random_n_tokens: list[int]
    n_unmatched: int


@dataclass
class PairMaskingResult:
    """Pair masking of one example: `steps` per number of pairs B (those above the pool's size are skipped)."""

    head: str
    output: str
    score_name: str
    p_full: float
    n_pairs: int
    n_random: int
    evaluations: int
    steps: list[PairMaskingStep] = field(default_factory=list)

    @property
    def pair_counts(self) -> list[int]:
        """The numbers of pairs B masked, one per step."""
        return [s.budget for s in self.steps]

    @property
    def ranked_drops(self) -> list[float]:
        return [s.ranked_drop for s in self.steps]

    @property
    def random_means(self) -> list[float]:
        return [s.random_mean for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairMaskingResult:
        data = dict(data)
        data["steps"] = [PairMaskingStep(**s) for s in data.get("steps", [])]
        return cls(**data)


# ------------------------------------------------------------------------------- leakage audits
@dataclass
class CueDecodability:
    """Probe accuracies (cross-validated) of one cue: from the evidence token and from the others."""

    from_evidence: float
    from_others: float
    n_examples: int
    chance: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaskingSurvival:
    """Per audited player: the effect of removing it from the input and from the features."""

    players: list[tuple[str, int]]
    effect_input: list[float]
    effect_feature: list[float]
    survival: list[float]
    input_evaluations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------ one example explained
@dataclass
class InteractionPair:
    """One cross-modal token pair with its Shapley interaction and redundancy gap (and standard errors)."""

    modality_a: str
    position_a: int
    token_a: str
    modality_b: str
    position_b: int
    token_b: str
    sii: float
    sii_se: float
    redundancy_gap: float
    redundancy_gap_se: float
    head: str = "mixture"


@dataclass
class Explanation:
    """One example explained: prediction, routing, per-head maps, top pairs, faithfulness, cost.

    `maps[head][modality]` is a list of token importances aligned with `tokens[modality]` (zero for
    tokens that are not players). `grids[modality]` gives `(rows, cols)` for image-like modalities.
    """

    label: str
    label_index: int
    probabilities: dict[str, float]
    expert_names: list[str]
    routing_weights: dict[str, float]
    expert_predictions: dict[str, dict[str, float]]
    method: str
    tokens: dict[str, list[str]]
    grids: dict[str, list[int]]
    maps: dict[str, dict[str, list[float]]]
    synergy_pairs: list[InteractionPair] = field(default_factory=list)
    redundancy_pairs: list[InteractionPair] = field(default_factory=list)
    expert_pairs: dict[str, dict[str, list[InteractionPair]]] = field(default_factory=dict)
    #: per head: top-K% masking of its map against random tokens
    faithfulness: dict[str, FaithfulnessResult] = field(default_factory=dict)
    #: per ranking score (``"sii"``, ``"redundancy_gap"``): masking the top pairs against random pairs
    pair_masking: dict[str, PairMaskingResult] = field(default_factory=dict)
    budget: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: per modality: "local" (a token's feature depends on its own input only), "contextual" or "unknown"
    feature_locality: dict[str, str] = field(default_factory=dict)
    players: str = "tokens"
    candidates: str = ""
    output: str = "logit"
    n_contexts: int = 0
    #: per modality: the first token position of each candidate player the pairs were drawn from
    candidate_players: dict[str, list[int]] = field(default_factory=dict)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        data = dict(data)
        for key in ("synergy_pairs", "redundancy_pairs"):
            data[key] = [InteractionPair(**p) for p in data.get(key, [])]
        data["expert_pairs"] = {
            head: {kind: [InteractionPair(**p) for p in pairs] for kind, pairs in by_kind.items()}
            for head, by_kind in (data.get("expert_pairs") or {}).items()
        }
        data["faithfulness"] = {h: FaithfulnessResult.from_dict(r) for h, r in (data.get("faithfulness") or {}).items()}
        data["pair_masking"] = {k: PairMaskingResult.from_dict(r) for k, r in (data.get("pair_masking") or {}).items()}
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 1) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "Explanation":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text_or_path) as f:
                text = f.read()
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ views
    def top_tokens(self, head: str = "mixture", modality: str | None = None, k: int = 5) -> list[tuple[str, int, str, float]]:
        """The k most important (modality, position, token, score) of one head."""
        rows = []
        for mod, scores in self.maps[head].items():
            if modality is not None and mod != modality:
                continue
            for i, s in enumerate(scores):
                rows.append((mod, i, self.tokens[mod][i] if i < len(self.tokens[mod]) else str(i), float(s)))
        return sorted(rows, key=lambda r: -r[3])[:k]

    def pairs_table(self, kind: str = "synergy") -> list[dict[str, Any]]:
        pairs = self.synergy_pairs if kind == "synergy" else self.redundancy_pairs
        return [asdict(p) for p in pairs]

    def summary(self) -> str:
        lines = [f"prediction: {self.label} (p = {self.probabilities[self.label]:.3f})"]
        lines.append("routing: " + ", ".join(f"{k} {v:.2f}" for k, v in self.routing_weights.items()))
        for p in self.synergy_pairs[:3]:
            lines.append(f"synergy  {p.token_a!r} x {p.token_b!r}: SII {p.sii:+.3f} +- {p.sii_se:.3f}")
        for p in self.redundancy_pairs[:3]:
            lines.append(f"redundant {p.token_a!r} x {p.token_b!r}: RG {p.redundancy_gap:+.3f} +- {p.redundancy_gap_se:.3f}")
        lines.append(f"budget spent: {self.evaluations} / {self.budget} coalition evaluations, {self.seconds:.1f} s")
        if self.feature_locality:
            lines.append("features: " + ", ".join(f"{m} {k}" for m, k in self.feature_locality.items()))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    # ------------------------------------------------------------------ pictures
    def heatmap_array(self, modality: str, head: str = "mixture") -> np.ndarray:
        """The map of an image-like modality as a `(rows, cols)` array, normalised to [0, 1]."""
        rows, cols = self.grids[modality]
        arr = np.asarray(self.maps[head][modality][: rows * cols], dtype=float).reshape(rows, cols)
        top = arr.max()
        return arr / top if top > 0 else arr

    def plot_tokens(self, modality: str = "text", heads: list[str] | None = None):
        """Token highlights, one row per head (darker = more important)."""
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        heads = heads or list(self.maps)
        tokens = self.tokens[modality]
        fig = Figure(figsize=(min(2 + 0.7 * len(tokens), 16), 0.8 * len(heads) + 0.4))
        axes = fig.subplots(len(heads), 1, squeeze=False)
        for ax, head in zip(axes[:, 0], heads):
            scores = np.asarray(self.maps[head][modality], dtype=float)
            top = scores.max() if scores.size and scores.max() > 0 else 1.0
            x = 0.0
            for _, tok, s in shown_tokens(tokens, scores):
                ax.text(x, 0.5, tok, fontsize=10, va="center", ha="left",
                        bbox=dict(facecolor=colormaps["Reds"](float(s) / top * 0.85), edgecolor="none", pad=2))
                x += 0.012 * (len(tok) + 2)
            ax.set_xlim(0, max(x, 0.1))
            ax.set_axis_off()
            ax.set_title(head, fontsize=9, loc="left")
        fig.tight_layout()
        return fig

    def plot_heatmap(self, image, modality: str = "image", head: str = "mixture", ax=None, alpha: float = 0.5):
        """The image with the head's patch/region importance laid over it."""
        from matplotlib.figure import Figure

        img = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        if ax is None:
            fig = Figure(figsize=(4, 4))
            ax = fig.subplots()
        else:
            fig = ax.figure
        h, w = img.shape[:2]
        ax.imshow(img)
        ax.imshow(self.heatmap_array(modality, head), cmap="jet", alpha=alpha, extent=(0, w, h, 0), interpolation="nearest")
        ax.set_title(f"{head}: {modality}", fontsize=9)
        ax.set_axis_off()
        return fig

    def plot_pairs(self, image, kind: str = "synergy", k: int = 5, text_modality: str = "text", image_modality: str = "image"):
        """Each top pair as a line from its caption token to its image region."""
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        pairs = (self.synergy_pairs if kind == "synergy" else self.redundancy_pairs)[:k]
        img = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        h, w = img.shape[:2]
        rows, cols = self.grids[image_modality]
        fig = Figure(figsize=(9, 4))
        ax_t, ax_i = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
        tokens = [t for t in self.tokens[text_modality]]
        used = sorted({p.position_a if p.modality_a == text_modality else p.position_b for p in pairs})
        ax_t.set_xlim(0, 1)
        ax_t.set_ylim(len(used) + 0.5, -0.5)
        ax_t.set_axis_off()
        y_of = {}
        for y, pos in enumerate(used):
            ax_t.text(0.95, y, tokens[pos] if pos < len(tokens) else str(pos), ha="right", va="center", fontsize=11)
            y_of[pos] = y
        ax_i.imshow(img)
        ax_i.set_axis_off()
        colors = colormaps["tab10"](np.arange(max(len(pairs), 1)) % 10)
        from matplotlib.patches import ConnectionPatch, Rectangle

        for n, p in enumerate(pairs):
            t_pos, region = (p.position_a, p.position_b) if p.modality_a == text_modality else (p.position_b, p.position_a)
            r, c = divmod(region, cols)
            cw, ch = w / cols, h / rows
            ax_i.add_patch(Rectangle((c * cw, r * ch), cw, ch, fill=False, lw=2, color=colors[n]))
            score = p.sii if kind == "synergy" else p.redundancy_gap
            con = ConnectionPatch(xyA=(0.97, y_of[t_pos]), coordsA=ax_t.transData, xyB=((c + 0.5) * cw, (r + 0.5) * ch),
                                  coordsB=ax_i.transData, color=colors[n], lw=2.5 if n == 0 else 1.5)
            fig.add_artist(con)
            ax_i.text(c * cw + 2, r * ch + 10, f"{score:+.2f}", color="white", fontsize=8,
                      bbox=dict(facecolor=colors[n], edgecolor="none", pad=1))
        ax_t.set_title(f"top {kind} pairs ({'SII' if kind == 'synergy' else 'RG'})", fontsize=10, loc="left")
        fig.tight_layout()
        return fig

    def plot_faithfulness(self, head: str = "mixture"):
        """Comprehensiveness and sufficiency against K%, for the map and for random tokens."""
        from matplotlib.figure import Figure

        result = self.faithfulness.get(head)
        fig = Figure(figsize=(8, 3))
        axes = fig.subplots(1, 2)
        if result is None:
            for ax in axes:
                ax.set_axis_off()
            axes[0].text(0.5, 0.5, "no faithfulness numbers", ha="center")
            return fig
        for ax, key in zip(axes, ("comprehensiveness", "sufficiency")):
            for modality, curve in result.per_modality.items():
                ax.plot(curve.k_percent, getattr(curve, key), marker="o", label=f"{modality}: map")
                ax.plot(curve.k_percent, getattr(curve, f"random_{key}"), ls="--", label=f"{modality}: random")
            ax.set_xlabel("K (% of tokens)")
            ax.set_title(key, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig
