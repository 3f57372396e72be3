"""Leakage audits: is a token's evidence in that token's feature alone, or spread over the others?

Contextual encoder features (a transformer's last layer, a CNN's final map) let every token see the
whole input, so the evidence of one word or region can be read from the *other* tokens' features.
Masking that one token's feature then does not remove its evidence, and feature-level scores (maps,
SII, redundancy gaps) spread over many tokens. Two audits say how much:

- `cue_decodability` (datasets with ground truth): cross-validated accuracy of a logistic probe that
  reads a cue from the evidence token's feature, against one that reads it from the other tokens'
  mean feature. A high second number means the cue leaks.
- `masking_survival` (any checkpoint and raw example): for chosen players, the share of the effect of
  removing the player from the *input* (the encoders re-run, `InputGame`) that is *not* reproduced by
  masking its *feature* (`FeatureGame`): `1 - effect_feature / effect_input`. Near 0 on local
  features; large where evidence survives in the other tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..random_state import RandomState, check_random_state
from .input_game import InputGame
from .occlusion import occlusion_effects
from .results import CueDecodability, MaskingSurvival

__all__ = ["cue_decodability", "masking_survival"]


def cue_decodability(
    evidence: np.ndarray | torch.Tensor,
    others: np.ndarray | torch.Tensor,
    cue: Sequence[int] | np.ndarray,
    folds: int = 5,
    random_state: RandomState = None,
) -> CueDecodability:
    """How well a cue is read from the evidence token's feature `(n, D)` and from the other tokens'
    (e.g. mean) feature `(n, D)`; `cue` `(n,)` holds the class of each example. Standardised features,
    L2 logistic regression, stratified `folds`-fold cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_e = np.asarray(torch.as_tensor(evidence).float().cpu(), dtype=np.float64)
    x_o = np.asarray(torch.as_tensor(others).float().cpu(), dtype=np.float64)
    y = np.asarray(cue).reshape(-1)
    if x_e.ndim != 2 or x_o.shape != x_e.shape or len(y) != len(x_e):
        raise ValueError(
            f"evidence and others must be (n, D) arrays of one shape with one cue per row; got {x_e.shape}, "
            f"{x_o.shape} and {len(y)} cues"
        )
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < folds:
        raise ValueError(f"every cue class needs at least folds={folds} examples; class counts {counts.tolist()}")
    rng = check_random_state(random_state)
    split = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))

    def probe(x: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        return float(cross_val_score(clf, x, y, cv=split).mean())

    return CueDecodability(probe(x_e), probe(x_o), len(y), float(counts.max() / counts.sum()))


def masking_survival(
    model: Any,
    processor: Any,
    inputs: Mapping[str, Any],
    players: Sequence[int] | None = None,
    top: int = 4,
    head: int | str = "mixture",
    output: str = "log_odds",
    groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
    min_effect: float = 1e-3,
) -> MaskingSurvival:
    """Share of each player's input-level removal effect that feature masking misses.

    `players`: player indices to audit (default: the `top` players by input-level removal effect of each
    modality, found with one leave-one-out sweep of the input game). Players whose input-level effect is
    below `min_effect` get survival NaN (nothing to survive)."""
    game_in = InputGame(model, processor, inputs, head=head, output=output, groups=groups)
    game_ft = game_in.feature_game
    n = game_in.n_players
    if players is None:
        loo = game_in.value_full - game_in(~torch.eye(n, dtype=torch.bool)).double()
        chosen: list[int] = []
        for name in game_in.modality_names:
            idx = game_ft.players_of(name)
            order = torch.argsort(loo[idx].abs(), descending=True)[:top]
            chosen += idx[order].tolist()
        players = chosen
        effect_in = loo[players]
    else:
        players = [int(p) for p in players]
        rows = torch.ones(len(players), n, dtype=torch.bool)
        rows[torch.arange(len(players)), torch.as_tensor(players)] = False
        effect_in = game_in.value_full - game_in(rows).double()
    effect_ft = occlusion_effects(game_ft).removal[players]
    survival = [
        float(1.0 - ef / ei) if abs(float(ei)) >= min_effect else float("nan")
        for ei, ef in zip(effect_in.tolist(), effect_ft.tolist())
    ]
    return MaskingSurvival(
        players=[game_in.players[p] for p in players],
        effect_input=[float(x) for x in effect_in.tolist()],
        effect_feature=[float(x) for x in effect_ft.tolist()],
        survival=survival,
        input_evaluations=game_in.evaluations,
    )
