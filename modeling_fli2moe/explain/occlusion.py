"""First-order occlusion effects of every player of a game: what removing it from the full input and
adding it to the empty input does to the value.

Both ends are needed. A token whose evidence is *redundant* (another token carries the same) barely
moves the value when removed from the full input, but moves it alone; a token in a *synergy* (the
value needs it and a partner) moves it when removed, but not alone. Their mean is the Shapley value's
two border strata (|S| = n - 1 and |S| = 0), which carry the largest weights; the sum of their sizes is
the candidate score of earlier versions. The cost is `2 * n_players` evaluations in one batch.

The empty end is the input a model sees least in training; `context_effects` measures the same two kinds
of token in antithetic half-full contexts instead (`S` and its complement: a pair's partner is present in
exactly one of them), which is what the Explainer's candidate search adds to the removal effects.
"""

from __future__ import annotations

from typing import Any

import torch

from ..random_state import RandomState, check_random_state
from .results import OcclusionEffects

__all__ = ["context_effects", "occlusion_effects", "occlusion_rows"]


def occlusion_rows(n_players: int) -> torch.Tensor:
    """The `2 * n_players` coalitions of the effects: every player removed from the full input, then every
    player alone."""
    eye = torch.eye(n_players, dtype=torch.bool)
    return torch.cat([~eye, eye])


def occlusion_effects(game: Any, values: torch.Tensor | None = None) -> OcclusionEffects:
    """Removal and inclusion effects of every player of `game` (a callable over bool coalitions with
    `n_players`, `value_full` and `value_empty`), in one batch of `2 * n_players` coalitions (or from their
    `values`, already computed in `occlusion_rows` order)."""
    n = int(game.n_players)
    values = (game(occlusion_rows(n)) if values is None else values).double()
    removal = float(game.value_full) - values[:n]
    inclusion = values[n:] - float(game.value_empty)
    return OcclusionEffects(removal=removal, inclusion=inclusion, evaluations=2 * n)


def context_effects(game: Any, n_pairs: int = 1, random_state: RandomState = None) -> torch.Tensor:
    """Marginal effects `(2 * n_pairs, n_players)` of every player of `game` in random half-full contexts:
    for each context `S` (each player present with probability 1/2) and its complement, `v(S + i) - v(S - i)`
    for every player `i`, from `S` with `i`'s presence flipped. A redundant token moves the value in the
    context where its partner is absent, a synergistic one where its partner is present, and each pair of
    contexts holds both. Costs `2 * n_pairs * (n_players + 1)` evaluations in one batch."""
    n = int(game.n_players)
    rng = check_random_state(random_state)
    half = torch.from_numpy(rng.random((n_pairs, n)) < 0.5)
    contexts = torch.cat([half, ~half])  # (2 m, n)
    eye = torch.eye(n, dtype=torch.bool)
    flipped = contexts[:, None, :] ^ eye  # (2 m, n, n)
    rows = torch.cat([contexts[:, None, :], flipped], dim=1).reshape(-1, n)
    values = game(rows).double().reshape(len(contexts), n + 1)
    sign = contexts.double() * 2 - 1  # +1: i in S (v(S) - v(S - i)); -1: i not in S (v(S + i) - v(S))
    return sign * (values[:, :1] - values[:, 1:])
