"""Configuration of FL-I2MoE (single source of truth for the model, its encoders and its labels).

This file travels with checkpoints as remote code: it imports only the standard library and transformers.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PreTrainedConfig

#: what stands in for absent tokens: N(0, 1) noise, zeros, the dataset-mean token, or nothing (masked out);
#: training's knock-outs take any of them, the explanation games "mean" and "remove"
FILLS = ("noise", "zero", "mean", "remove")
INTERACTION_SPACES = ("latent", "logits")
MIXTURES = ("interaction", "dense")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
ENCODER_TYPES = ("hf-text", "hf-vision", "efficientnet-lite0", "precomputed")


def infer_problem_type(num_labels: int, labels_ndim: int, integer_labels: bool) -> str:
    """The `problem_type` of a classifier whose config leaves it `None`, from its labels: one output is regression; a
    row of labels per example or float labels multi-label; integer class indices single-label (as in transformers)."""
    if num_labels == 1:
        return "regression"
    if labels_ndim > 1:
        return "multi_label_classification"
    return "single_label_classification" if integer_labels else "multi_label_classification"


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"FLI2MoEConfig.{field}: {message}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class FLI2MoEConfig(PreTrainedConfig):
    r"""Configuration of an FL-I2MoE classifier over frozen-encoder token features.

    Args:
        modalities (`list[dict]`):
            One dict per modality, in a fixed order. Required keys: `name` (str, unique) and `input_dim` (int, the
            frozen encoder's feature size). Optional: `max_tokens` (int, tokens per example from the encoder) and
            `encoder` (how to make the features from raw inputs, e.g. `{"type": "hf-text", "name_or_path":
            "roberta-base"}`; `type` is one of `ENCODER_TYPES`).
        hidden_size (`int`, defaults to 256): width H of every expert.
        num_layers (`int`, defaults to 2): pre-LayerNorm blocks per expert.
        num_heads (`int`, defaults to 4): attention heads; must divide `hidden_size`.
        ffn_multiplier (`int`, defaults to 2): the feed-forward block is H -> ffn_multiplier*H -> H.
        dropout (`float`, defaults to 0.5): dropout in the experts and the router.
        router_layers (`int`, defaults to 2): linear layers in the router MLP (>= 1).
        router_hidden_size (`int`, defaults to 256): hidden width of the router MLP.
        router_temperature (`float`, defaults to 2.0): softmax temperature tau of the router.
        interaction_loss_weight (`float`, defaults to 0.5): lambda_int in `L = L_task + lambda_int * mean_e L_int(e)`.
        triplet_margin (`float`, defaults to 1.0): margin of the uniqueness experts' triplet loss.
        fill (`str`, defaults to `"noise"`): what stands in for a knocked-out modality's projected tokens in the
            interaction losses: `noise` (N(0, 1)), `zero`, `mean` (the dataset-mean token) or `remove` (masked out).
        interaction_space (`str`, defaults to `"latent"`): where interaction losses compare the clean and knocked-out
            passes: `latent` (pooled expert latents) or `logits`.
        token_masking (`float`, defaults to 0.0): in training, each example draws a rate `r ~ U(0, token_masking)` and each
            of its tokens becomes absent with probability `r` (masked out if `fill` is `remove`, else the dataset-mean
            token, as in the explanations' games), so that the model reads an absent token as "unknown". `0`: off.
        mixture (`str`, defaults to `"interaction"`): `interaction` (M uniqueness experts, a synergy and a redundancy
            expert, a router) or `dense` (one expert, no router, no interaction loss).
        num_labels / id2label / label2id / problem_type: as in every transformers classifier; `problem_type` is one of
            `PROBLEM_TYPES` (inferred from the labels when `None`).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear layers.
    """

    model_type = "fl_i2moe"
    # outputs that transformers.Trainer must not gather as predictions (scalars / per-batch diagnostics)
    keys_to_ignore_at_inference = ["latents", "task_loss", "interaction_loss", "expert_interaction_losses", "attentions"]

    def __init__(
        self, modalities: list[dict[str, Any]] | None = None, hidden_size: int = 256, num_layers: int = 2,
        num_heads: int = 4, ffn_multiplier: int = 2, dropout: float = 0.5, router_layers: int = 2,
        router_hidden_size: int = 256, router_temperature: float = 2.0, interaction_loss_weight: float = 0.5,
        triplet_margin: float = 1.0, fill: str | None = None, interaction_space: str = "latent",
        token_masking: float = 0.0, mixture: str = "interaction", initializer_range: float = 0.02, **kwargs: Any
    ) -> None:
        if modalities is None:
            modalities = [{"name": "text", "input_dim": 384, "max_tokens": 64}, {"name": "image", "input_dim": 1280, "max_tokens": 49}]
        self.modalities = copy.deepcopy(list(modalities))
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ffn_multiplier = ffn_multiplier
        self.dropout = dropout
        self.router_layers = router_layers
        self.router_hidden_size = router_hidden_size
        self.router_temperature = router_temperature
        self.interaction_loss_weight = interaction_loss_weight
        self.triplet_margin = triplet_margin
        self.fill = "noise" if fill is None else fill
        self.interaction_space = interaction_space
        self.token_masking = token_masking
        self.mixture = mixture
        self.initializer_range = initializer_range
        # how a model was trained (data folder, training arguments) is not part of the model: config.json
        # files written by earlier versions carried `dataset` / `training` sections; they are dropped
        kwargs.pop("dataset", None)
        kwargs.pop("training", None)
        super().__init__(**kwargs)
        if self.id2label is not None and not self.label2id:
            self.label2id = {v: int(k) for k, v in self.id2label.items()}
        self.validate_fli2moe()

    # ------------------------------------------------------------------ derived
    @property
    def modality_names(self) -> list[str]:
        return [m["name"] for m in self.modalities]

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_experts(self) -> int:
        """M + 2 for the interaction mixture (M uniqueness, synergy, redundancy), 1 for dense."""
        return self.num_modalities + 2 if self.mixture == "interaction" else 1

    @property
    def expert_names(self) -> list[str]:
        if self.mixture == "dense":
            return ["dense"]
        return [f"uniqueness_{n}" for n in self.modality_names] + ["synergy", "redundancy"]

    def modality(self, name: str) -> dict[str, Any]:
        for m in self.modalities:
            if m["name"] == name:
                return m
        raise KeyError(f"unknown modality {name!r}; this model has {self.modality_names}")

    def validate_fli2moe(self) -> None:
        """Check every FL-I2MoE field; raise `ValueError` naming the field and the allowed values."""
        _require(isinstance(self.modalities, list) and len(self.modalities) >= 1, "modalities",
                 f"expected a non-empty list of dicts like {{'name': 'text', 'input_dim': 384}}, got {self.modalities!r}")
        seen = set()
        for i, m in enumerate(self.modalities):
            _require(isinstance(m, dict), f"modalities[{i}]", f"expected a dict, got {type(m).__name__}")
            name, dim, mt, enc = m.get("name"), m.get("input_dim"), m.get("max_tokens"), m.get("encoder")
            _require(isinstance(name, str) and name.isidentifier(), f"modalities[{i}].name",
                     f"expected a non-empty identifier-like string (letters, digits, '_'), got {name!r}")
            _require(name not in seen, f"modalities[{i}].name", f"duplicate modality name {name!r}")
            seen.add(name)
            _require(_positive_int(dim), f"modalities[{i}].input_dim",
                     f"expected a positive int (the encoder's feature size) for modality {name!r}, got {dim!r}")
            _require(mt is None or _positive_int(mt), f"modalities[{i}].max_tokens",
                     f"expected a positive int or None for modality {name!r}, got {mt!r}")
            _require(enc is None or (isinstance(enc, dict) and enc.get("type") in ENCODER_TYPES), f"modalities[{i}].encoder",
                     f"expected a dict whose 'type' is one of {list(ENCODER_TYPES)}, got {enc!r}")
        for field in ("hidden_size", "num_layers", "num_heads", "ffn_multiplier", "router_hidden_size", "router_layers", "num_labels"):
            _require(_positive_int(getattr(self, field)), field, f"expected a positive int, got {getattr(self, field)!r}")
        _require(self.hidden_size % self.num_heads == 0, "num_heads", f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}")
        for field, low, high, what in (
            ("dropout", 0.0, 1.0, "a float in [0, 1)"),
            ("token_masking", 0.0, 1.0 + 1e-12, "a float in [0, 1] (the largest per-example masking rate; 0 = off)"),
            ("router_temperature", 1e-12, float("inf"), "a positive float"),
            ("interaction_loss_weight", 0.0, float("inf"), "a float >= 0"),
        ):
            v = getattr(self, field)
            _require(isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v < high, field, f"expected {what}, got {v!r}")
        for field, allowed in (("fill", FILLS), ("interaction_space", INTERACTION_SPACES), ("mixture", MIXTURES)):
            _require(getattr(self, field) in allowed, field, f"expected one of {list(allowed)}, got {getattr(self, field)!r}")
        _require(self.problem_type is None or self.problem_type in PROBLEM_TYPES, "problem_type",
                 f"expected one of {list(PROBLEM_TYPES)} or None, got {self.problem_type!r}")


__all__ = ["FLI2MoEConfig", "infer_problem_type"]
