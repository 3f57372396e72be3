"""Explanations of FL-I2MoE: games, attributions, Shapley interactions, redundancy gaps, pair masking.

Public names live here (captum-style); each method has its own module.
"""

from .attribution import AttributionMaps, attribute
from .example import ExplainedExample
from .explainer import Explainer
from .explanation import Explanation, InteractionPair
from .faithfulness import concentration, faithfulness, faithfulness_for_maps, specificity
from .game import FeatureGame
from .input_game import InputGame
from .leakage import CueDecodability, MaskingSurvival, cue_decodability, masking_survival
from .occlusion import OcclusionEffects, occlusion_effects
from .pair_masking import PairMaskingResult, pair_masking, paired_test
from .result_interactions import InteractionResult
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
