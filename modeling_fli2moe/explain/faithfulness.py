"""Faithfulness of a token map by top-K% masking, and the concentration / specificity of maps.

Faithfulness, per modality m and K in (5, 10, 15, 20, 25):

- comprehensiveness(K) = p(x) - p(x without the top-K% players of m) (other modalities intact),
- sufficiency(K) = p(x) - p(x with only the top-K% players of m) (our choice: the other modalities stay
  intact, so the number isolates modality m),
- AOPC = the mean over K of each,
- the control: the same with random players (``n_random`` random orders of m's players, nested over K),
- the gaps, signed so that positive = the map beats random: ``aopc_comprehensiveness - random`` and
  ``random - aopc_sufficiency``.

K% of n players is ``ceil(K n / 100)`` players, at least one. Ties in the map break by player order.
An extra entry ``"all"`` ranks the players of every modality jointly. Every masked variant of every
modality goes through the game as ONE batch of coalitions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..random_state import RandomState, check_random_state
from .game import ExplainedExample, FeatureGame, require_example
from .results import (
    AttributionMaps,
    ConcentrationResult,
    FaithfulnessCurve,
    FaithfulnessResult,
    SpecificityResult,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_K_PERCENTS",
    "concentration",
    "faithfulness",
    "faithfulness_for_maps",
    "specificity",
    "top_k_count",
]

DEFAULT_K_PERCENTS: tuple[float, ...] = (5, 10, 15, 20, 25)


def top_k_count(k_percent: float, n: int) -> int:
    """Players in the top-K% of `n`: `ceil(K n / 100)`, at least 1, at most n."""
    return min(max(math.ceil(k_percent * n / 100.0 - 1e-9), 1), n)


def _ranking(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score, ties broken by index (stable)."""
    return torch.argsort(-scores.double(), stable=True)


# -------------------------------------------------------------------------------------- faithfulness
def _scores_of(game: FeatureGame, token_map: Any) -> torch.Tensor:
    """Per-player scores from a token map `{name: (T_m,)}` or a `(n_players,)` vector."""
    if isinstance(token_map, Mapping):
        return game.player_scores(token_map)
    scores = torch.as_tensor(token_map).detach().reshape(-1).cpu().double()
    if scores.numel() != game.n_players:
        raise ValueError(
            f"the map has {scores.numel()} entries; pass a token map {{modality: (T_m,)}} or one score per player "
            f"({game.n_players})"
        )
    return scores


def faithfulness(
    game: FeatureGame,
    token_map: Mapping[str, torch.Tensor] | torch.Tensor,
    k_percents: Sequence[float] = DEFAULT_K_PERCENTS,
    n_random: int = 10,
    random_state: RandomState = None,
    include_all: bool = True,
) -> FaithfulnessResult:
    """Comprehensiveness, sufficiency and AOPC of a map against random tokens, one batched game call.

    Args:
        game: the example's `FeatureGame`; build it with `output="probability"` so that p(x) is the target probability.
        token_map: `{modality: (T_m,)}` token importances (e.g. `AttributionMaps[head]`) or one score per
            player. Grouped players score the sum of their tokens.
        k_percents: the K values (percent of each modality's players).
        n_random: random orders per modality for the control.
        random_state: seed / numpy Generator / torch.Generator for the random control.
        include_all: also rank all players jointly (entry ``"all"``).
    """
    if n_random < 1:
        raise ValueError(f"n_random must be >= 1, got {n_random}")
    ks = [float(k) for k in k_percents]
    if not ks or any(not 0 < k <= 100 for k in ks):
        raise ValueError(f"k_percents must be percentages in (0, 100], got {list(k_percents)}")
    rng = check_random_state(random_state)
    scores = _scores_of(game, token_map)
    n = game.n_players
    groups: dict[str, torch.Tensor] = {}
    for name in game.modality_names:
        members = game.players_of(name)
        if members.numel() == 0:
            logger.info("faithfulness: modality %r has no players in this example; skipped", name)
            continue
        groups[name] = members
    if include_all:
        groups["all"] = torch.arange(n)

    rows: list[torch.Tensor] = [torch.ones(n, dtype=torch.bool)]  # row 0: the full input
    layout: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        m = members.numel()
        counts = [top_k_count(k, m) for k in ks]
        orders = [members[_ranking(scores[members])]]
        orders += [members[torch.from_numpy(rng.permutation(m))] for _ in range(n_random)]
        start = len(rows)
        for order in orders:  # order 0 = the map, then the random orders
            for c in counts:
                top = order[:c]
                without = torch.ones(n, dtype=torch.bool)
                without[top] = False
                only = torch.ones(n, dtype=torch.bool)
                only[members] = False
                only[top] = True
                rows += [without, only]
        layout[name] = {"start": start, "counts": counts, "m": m}

    values = game(torch.stack(rows)).double()
    p_full = float(values[0])
    result = FaithfulnessResult(
        head=game.head, output=game.output, fill=game.fill, p_full=p_full, n_random=n_random, evaluations=len(rows)
    )
    nk = len(ks)
    for name, info in layout.items():
        block = values[info["start"] : info["start"] + 2 * nk * (n_random + 1)].reshape(n_random + 1, nk, 2)
        drops = p_full - block  # (orders, K, [comprehensiveness, sufficiency])
        comp, suff = drops[0, :, 0], drops[0, :, 1]
        rand = drops[1:]
        r_comp, r_suff = rand[:, :, 0], rand[:, :, 1]
        aopc_c, aopc_s = float(comp.mean()), float(suff.mean())
        r_aopc_c, r_aopc_s = float(r_comp.mean()), float(r_suff.mean())
        result.per_modality[name] = FaithfulnessCurve(
            k_percent=ks,
            n_tokens=info["counts"],
            n_players=info["m"],
            comprehensiveness=comp.tolist(),
            sufficiency=suff.tolist(),
            random_comprehensiveness=r_comp.mean(0).tolist(),
            random_sufficiency=r_suff.mean(0).tolist(),
            random_comprehensiveness_std=r_comp.std(0, unbiased=False).tolist(),
            random_sufficiency_std=r_suff.std(0, unbiased=False).tolist(),
            aopc_comprehensiveness=aopc_c,
            aopc_sufficiency=aopc_s,
            random_aopc_comprehensiveness=r_aopc_c,
            random_aopc_sufficiency=r_aopc_s,
            comprehensiveness_gap=aopc_c - r_aopc_c,
            sufficiency_gap=r_aopc_s - aopc_s,
        )
    return result


def faithfulness_for_maps(
    example: ExplainedExample,
    maps: AttributionMaps,
    heads: Sequence[str] | None = None,
    k_percents: Sequence[float] = DEFAULT_K_PERCENTS,
    n_random: int = 10,
    random_state: RandomState = None,
    **game_kwargs: Any,
) -> dict[str, FaithfulnessResult]:
    """`faithfulness` for every head of `maps`, each on a probability game of that head with the map's
    target, made from `example` (the `ExplainedExample` the maps were made of: its player mask must be the
    maps'). `game_kwargs` go to `FeatureGame` (fill, groups, chunk_size, autocast_dtype; `groups` defaults
    to the example's)."""
    example = require_example(example, "faithfulness_for_maps")
    rng = check_random_state(random_state)
    if any(not torch.equal(example.player_mask[n], maps.player_mask[n].cpu().bool()) for n in example.player_mask):
        raise ValueError(
            "the maps were made with other players than this example's; make the maps of this example "
            "(attribute(example, ...)) or prepare the example with the maps' player_mask"
        )
    results = {}
    for head in heads or maps.heads:
        game = example.game_for(head, target=maps.targets.get(head), output="probability", **game_kwargs)
        results[head] = faithfulness(game, maps[head], k_percents, n_random, rng)
    return results


# ------------------------------------------------------------------------------------- concentration
def _players_and_values(
    token_map: Mapping[str, torch.Tensor], player_mask: Mapping[str, torch.Tensor] | None
) -> dict[str, np.ndarray]:
    out = {}
    for name, values in token_map.items():
        v = torch.as_tensor(values).detach().reshape(-1).cpu().double()
        if player_mask is not None and name in player_mask:
            keep = torch.as_tensor(player_mask[name]).reshape(-1).bool()
            if keep.numel() != v.numel():
                raise ValueError(f"player_mask[{name!r}] has {keep.numel()} entries but the map has {v.numel()}")
            v = v[keep]
        if bool((v < 0).any()):
            raise ValueError(f"the map of {name!r} has negative scores; take abs() or clamp first (maps are masses)")
        out[name] = v.numpy()
    return out


def _entropy_and_top(v: np.ndarray, top_fraction: float) -> tuple[float, float]:
    n, total = v.size, float(v.sum())
    if n == 0 or total <= 0:
        return float("nan"), float("nan")
    if n == 1:
        return 0.0, 1.0
    p = v / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(n))
    k = top_k_count(100.0 * top_fraction, n)
    top = float(np.sort(v)[::-1][:k].sum() / total)
    return entropy, top


def concentration(
    token_map: Mapping[str, torch.Tensor],
    player_mask: Mapping[str, torch.Tensor] | None = None,
    top_fraction: float = 0.1,
) -> ConcentrationResult:
    """Normalised entropy `H(p) / log n` of `p = map / sum(map)` over the players, and the mass share of
    the top `top_fraction` players (`ceil`, at least one), per modality and jointly (``"all"``).

    `player_mask` (e.g. `AttributionMaps.player_mask`) restricts to players; without it every position
    counts. NaN where a map has no mass.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    values = _players_and_values(token_map, player_mask)
    values["all"] = np.concatenate(list(values.values())) if values else np.zeros(0)
    entropy, top = {}, {}
    for name, v in values.items():
        entropy[name], top[name] = _entropy_and_top(v, top_fraction)
    return ConcentrationResult(top_fraction, entropy, top, {k: int(v.size) for k, v in values.items()})


# --------------------------------------------------------------------------------------- specificity
def specificity(
    maps: AttributionMaps | Mapping[str, Mapping[str, torch.Tensor]],
    player_mask: Mapping[str, torch.Tensor] | None = None,
    k_percent: float = 10.0,
    heads: Sequence[str] | None = None,
) -> SpecificityResult:
    """Per-head mass share per modality and pairwise Jaccard overlap of top-K% sets.

    `maps`: an `AttributionMaps` (its player mask is used) or `{head: {modality: (T_m,)}}`.
    """
    if isinstance(maps, AttributionMaps):
        player_mask = maps.player_mask if player_mask is None else player_mask
        maps = maps.maps
    heads = list(heads or maps.keys())
    if not heads:
        raise ValueError("specificity needs at least one head's map")
    values = {h: _players_and_values(maps[h], player_mask) for h in heads}
    modalities = list(values[heads[0]].keys())
    share = {}
    for h in heads:
        total = sum(float(values[h][m].sum()) for m in modalities)
        share[h] = {m: (float(values[h][m].sum()) / total if total > 0 else float("nan")) for m in modalities}
    jaccard: dict[str, dict[str, dict[str, float]]] = {}
    mean_jaccard = {}
    for m in modalities + ["all"]:
        tops = {}
        for h in heads:
            v = np.concatenate([values[h][x] for x in modalities]) if m == "all" else values[h][m]
            if v.size == 0:
                continue
            order = np.argsort(-v, kind="stable")
            tops[h] = set(order[: top_k_count(k_percent, v.size)].tolist())
        if not tops:
            continue
        jaccard[m] = {a: {b: len(tops[a] & tops[b]) / len(tops[a] | tops[b]) for b in tops} for a in tops}
        experts = [h for h in tops if h != "mixture"]
        pairs = [(a, b) for i, a in enumerate(experts) for b in experts[i + 1 :]]
        mean_jaccard[m] = float(np.mean([jaccard[m][a][b] for a, b in pairs])) if pairs else float("nan")
    return SpecificityResult(float(k_percent), heads, share, jaccard, mean_jaccard)
