"""Pair-level masking: does masking the top-ranked cross-modal pairs hurt more than random pairs?

For one example: rank candidate pairs (player indices of the game) by a score (SII or RG), mask both
tokens of the top B pairs (B in 1, 2, 4, 8: `pair_counts`) and measure the drop in the game's value (build the game with
``output="probability"`` for the drop in target probability). The control masks B random pairs from the
same pool, ``n_random`` times, with the same number of distinct tokens as the ranked selection (ranked
pairs may share a token). Every variant goes through the game in one batch.

Matching the token count (our choice of sampler): first uniform B-subsets of the pool, accepted when their
token count matches (the exact conditional distribution); if that keeps failing, the ranked selection's
pattern is relabelled with random tokens of the pool's modalities (accepted when every relabelled pair is
in the pool; always so for a full cross product); else the closest count found is used and counted in
``n_unmatched``.

At dataset level, `paired_test` compares per-example ranked drops with the mean random drops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..random_state import RandomState, check_random_state
from .results import PairMaskingResult, PairMaskingStep

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PAIR_COUNTS", "pair_masking", "paired_test"]

#: the numbers of pairs B masked at once
DEFAULT_PAIR_COUNTS: tuple[int, ...] = (1, 2, 4, 8)


def _tokens(pairs: np.ndarray) -> set[int]:
    return set(pairs.reshape(-1).tolist())


def _sample_matched(
    rng: np.random.Generator,
    pool: np.ndarray,
    pool_set: set[tuple[int, int]],
    modality: np.ndarray,
    ranked: np.ndarray,
    max_tries: int,
) -> tuple[np.ndarray, bool]:
    """B random pool pairs whose distinct-token count equals the ranked selection's (see module doc)."""
    b, want = len(ranked), len(_tokens(ranked))
    best, best_gap = None, None
    for _ in range(max_tries):
        pick = pool[rng.choice(len(pool), size=b, replace=False)]
        gap = abs(len(_tokens(pick)) - want)
        if gap == 0:
            return pick, True
        if best_gap is None or gap < best_gap:
            best, best_gap = pick, gap
    # relabel the ranked pattern with random tokens of the same modalities from the pool
    used = sorted(_tokens(ranked))
    flat = pool.reshape(-1)
    own_by_mod = {mod: [t for t in used if modality[t] == mod] for mod in sorted(set(modality[used].tolist()))}
    candidates = {mod: np.unique(flat[modality[flat] == mod]) for mod in own_by_mod}  # each holds its own tokens
    for _ in range(max_tries):
        mapping: dict[int, int] = {}
        for mod, own in own_by_mod.items():
            mapping.update(zip(own, rng.choice(candidates[mod], size=len(own), replace=False).tolist()))
        pick = np.array([[mapping[i], mapping[j]] for i, j in ranked.tolist()], dtype=np.int64)
        if all((min(i, j), max(i, j)) in pool_set for i, j in pick.tolist()):
            return pick, True
    return best, False


def pair_masking(
    game: Any,
    pairs: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    scores: torch.Tensor | np.ndarray | Sequence[float],
    pair_counts: Sequence[int] = DEFAULT_PAIR_COUNTS,
    n_random: int = 10,
    random_state: RandomState = None,
    score_name: str = "sii",
    max_tries: int = 200,
) -> PairMaskingResult:
    """Drops of the game's value when masking the top-B pairs by `scores` vs B random pool pairs.

    Args:
        game: the example's game (any object with `__call__(coalitions)`, `n_players`,
            `modality_of_player`, `value_full`, and optionally `head` / `output`).
        pairs: `(P, 2)` cross-modal candidate pairs of player indices (the pool).
        scores: `(P,)` ranking scores (higher = masked first), e.g. SII or RG.
        pair_counts: the numbers of pairs B to mask; those above P are skipped.
        n_random: random selections per B (same B, same number of distinct tokens).
        random_state: seed / numpy Generator / torch.Generator for the random control.
        score_name: recorded in the result (``"sii"`` or ``"rg"``).
        max_tries: attempts per random selection before falling back (see the module doc).
    """
    pool = (pairs.detach().cpu().numpy() if torch.is_tensor(pairs) else np.asarray(pairs)).astype(np.int64).reshape(-1, 2)
    score = (scores.detach().cpu().numpy() if torch.is_tensor(scores) else np.asarray(scores)).astype(float).reshape(-1)
    n = int(game.n_players)
    if len(pool) == 0:
        raise ValueError("pair_masking needs at least one candidate pair; pass pairs of shape (P, 2)")
    if score.shape[0] != len(pool):
        raise ValueError(f"scores has {score.shape[0]} entries but there are {len(pool)} pairs; pass one score per pair")
    if not np.isfinite(score).all():
        raise ValueError("scores contain NaN or inf; rank only pairs with finite scores")
    if pool.min() < 0 or pool.max() >= n:
        raise ValueError(f"pairs must be player indices in [0, {n}); got values in [{pool.min()}, {pool.max()}]")
    modality = torch.as_tensor(game.modality_of_player).cpu().numpy()
    same = modality[pool[:, 0]] == modality[pool[:, 1]]
    if same.any():
        raise ValueError(
            f"pair {pool[same][0].tolist()} is not cross-modal (both players in modality {int(modality[pool[same][0][0]])}); "
            "pair masking compares cross-modal pairs"
        )
    keys = [(min(i, j), max(i, j)) for i, j in pool.tolist()]
    if len(set(keys)) != len(keys):
        raise ValueError("pairs contains a duplicate pair; pass each candidate pair once")
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    rng = check_random_state(random_state)
    order = np.argsort(-score, kind="stable")
    pool_set = set(keys)

    rows = [np.ones(n, dtype=bool)]
    plan = []
    for b in sorted({int(b) for b in pair_counts}):
        if b < 1:
            raise ValueError(f"pair_counts must be positive, got {b}")
        if b > len(pool):
            logger.info("pair_masking: B = %d pairs skipped (only %d candidate pairs)", b, len(pool))
            continue
        ranked = pool[order[:b]]
        selections, unmatched = [ranked], 0
        for _ in range(n_random):
            pick, matched = _sample_matched(rng, pool, pool_set, modality, ranked, max_tries)
            unmatched += not matched
            selections.append(pick)
        if unmatched:
            logger.warning(
                "pair_masking: %d of %d random selections for B=%d could not match the %d distinct tokens of the "
                "ranked pairs; the closest count was used",
                unmatched, n_random, b, len(_tokens(ranked)),
            )
        for sel in selections:
            row = np.ones(n, dtype=bool)
            row[sel.reshape(-1)] = False
            rows.append(row)
        plan.append((b, ranked, unmatched, [len(_tokens(sel)) for sel in selections[1:]]))

    values = game(torch.from_numpy(np.stack(rows))).double().numpy()
    p_full = float(values[0])
    result = PairMaskingResult(
        head=str(getattr(game, "head", "")),
        output=str(getattr(game, "output", "")),
        score_name=score_name,
        p_full=p_full,
        n_pairs=len(pool),
        n_random=n_random,
        evaluations=len(rows),
    )
    for s, (b, ranked, unmatched, random_n_tokens) in enumerate(plan):
        block = p_full - values[1 + s * (n_random + 1) : 1 + (s + 1) * (n_random + 1)]
        rand = block[1:]
        result.steps.append(
            PairMaskingStep(
                budget=b,
                pairs=ranked.tolist(),
                n_tokens=len(_tokens(ranked)),
                ranked_drop=float(block[0]),
                random_drops=rand.tolist(),
                random_mean=float(rand.mean()),
                random_std=float(rand.std()),
                random_n_tokens=random_n_tokens,
                n_unmatched=unmatched,
            )
        )
    return result


def paired_test(
    ranked_drops: Sequence[float] | np.ndarray,
    random_drops: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    method: str = "wilcoxon",
    alternative: str = "greater",
) -> dict[str, Any]:
    """Dataset-level paired test of ranked vs random drops over examples (one number of pairs B).

    `ranked_drops`: `(n_examples,)`; `random_drops`: `(n_examples,)` per-example means, or
    `(n_examples, n_random)` (averaged per example). `method`: ``"wilcoxon"`` (scipy's Wilcoxon
    signed-rank test, the default: no normality assumption) or ``"ttest"`` (paired t-test,
    `scipy.stats.ttest_rel`). `alternative="greater"`: ranked masking hurts more than random.
    Returns `{method, alternative, n, mean_difference, median_difference, statistic, p_value}`.
    """
    from scipy import stats

    ranked = np.asarray(ranked_drops, dtype=float).reshape(-1)
    rand = np.asarray(random_drops, dtype=float)
    if rand.ndim == 2:
        rand = rand.mean(axis=1)
    rand = rand.reshape(-1)
    if ranked.shape != rand.shape:
        raise ValueError(f"ranked_drops has {ranked.size} examples but random_drops has {rand.size}; pair them per example")
    if method not in ("wilcoxon", "ttest"):
        raise ValueError(f"method must be 'wilcoxon' or 'ttest', got {method!r}")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    diff = ranked - rand
    out: dict[str, Any] = {
        "method": method,
        "alternative": alternative,
        "n": int(diff.size),
        "mean_difference": float(diff.mean()) if diff.size else float("nan"),
        "median_difference": float(np.median(diff)) if diff.size else float("nan"),
        "statistic": float("nan"),
        "p_value": float("nan"),
    }
    if diff.size < 2 or np.allclose(diff, 0):
        logger.warning("paired_test: %d examples with differences all zero or too few; no test", diff.size)
        return out
    if method == "wilcoxon":
        res = stats.wilcoxon(ranked, rand, alternative=alternative)
    else:
        res = stats.ttest_rel(ranked, rand, alternative=alternative)
    out["statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out
