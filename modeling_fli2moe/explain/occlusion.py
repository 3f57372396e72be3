"""First-order occlusion effects of every player of a game: what removing it from the full input and
adding it to the empty input does to the value.

Both ends are needed. A token whose evidence is *redundant* (another token carries the same) barely
moves the value when removed from the full input, but moves it alone; a token in a *synergy* (the
value needs it and a partner) moves it when removed, but not alone. Their mean is the Shapley value's
two border strata (|S| = n - 1 and |S| = 0), which carry the largest weights; the sum of their sizes is
the candidate score that pair search uses. The cost is `2 * n_players` evaluations in one batch.
"""

from __future__ import annotations

from typing import Any

import torch

from .results import OcclusionEffects

__all__ = ["occlusion_effects", "occlusion_rows"]


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
