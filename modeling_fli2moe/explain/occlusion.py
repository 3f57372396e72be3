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

__all__ = ["occlusion_effects"]


def occlusion_effects(game: Any) -> OcclusionEffects:
    """Removal and inclusion effects of every player of `game` (a callable over bool coalitions with
    `n_players`, `value_full` and `value_empty`), in one batch of `2 * n_players` coalitions."""
    n = int(game.n_players)
    eye = torch.eye(n, dtype=torch.bool)
    values = game(torch.cat([~eye, eye])).double()
    removal = float(game.value_full) - values[:n]
    inclusion = values[n:] - float(game.value_empty)
    return OcclusionEffects(removal=removal, inclusion=inclusion, evaluations=2 * n)
