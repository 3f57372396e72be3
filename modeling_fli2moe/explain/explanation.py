"""`Explanation`: everything one explained example carries, saved as JSON and drawn as pictures."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .faithfulness import FaithfulnessResult
from .pair_masking import PairMaskingResult

#: tokens that carry no content (padding and the tokenizers' sequence markers): never drawn
SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"})


def shown_tokens(tokens: list[str], scores: Any) -> list[tuple[int, str, float]]:
    """`(position, token, score)` of the tokens worth drawing: every token but padding and sequence markers
    (`SPECIAL_TOKENS`), with its score from `scores` (aligned with `tokens`)."""
    return [(i, tok, float(s)) for i, (tok, s) in enumerate(zip(tokens, scores)) if tok not in SPECIAL_TOKENS]


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


def grid_shape(n_tokens: int) -> list[int]:
    """A square grid for image-like token sequences (49 -> 7x7, 196 -> 14x14)."""
    side = int(round(math.sqrt(n_tokens)))
    return [side, side] if side * side == n_tokens else [1, n_tokens]
