"""Explanations of FL-I2MoE: games, attributions, Shapley interactions, redundancy gaps, pair masking.

Public names live here (captum-style); each method has its own module, and every result type they return
lives in `results`.
"""

from .attribution import attribute
from .explainer import Explainer
from .faithfulness import concentration, faithfulness, faithfulness_for_maps, specificity
from .game import ExplainedExample, FeatureGame
from .input_game import InputGame
from .leakage import cue_decodability, masking_survival
from .occlusion import occlusion_effects
from .pair_masking import pair_masking, paired_test
from .results import (
    AttributionMaps,
    CueDecodability,
    Explanation,
    InteractionPair,
    InteractionResult,
    MaskingSurvival,
    OcclusionEffects,
    PairMaskingResult,
)
from .shapley import PairInteractionApproximator, exact_shapley_interactions, shapley_interactions

__all__ = [
    "AttributionMaps",
    "ExplainedExample",
    "Explainer",
    "Explanation",
    "FeatureGame",
    "InteractionPair",
    "InputGame",
    "InteractionResult",
    "CueDecodability",
    "MaskingSurvival",
    "OcclusionEffects",
    "PairMaskingResult",
    "PairInteractionApproximator",
    "attribute",
    "concentration",
    "exact_shapley_interactions",
    "faithfulness",
    "faithfulness_for_maps",
    "cue_decodability",
    "masking_survival",
    "occlusion_effects",
    "pair_masking",
    "paired_test",
    "shapley_interactions",
    "specificity",
]
