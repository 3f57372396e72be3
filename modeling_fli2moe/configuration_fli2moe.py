"""Configuration of FL-I2MoE (single source of truth for the model, its encoders and its labels).

This file travels with checkpoints as remote code: it imports only the standard library and transformers.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PreTrainedConfig

FILLS = ("noise", "zero", "mean")
INTERACTION_SPACES = ("latent", "logits")
MIXTURES = ("interaction", "dense")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
ENCODER_TYPES = ("hf-text", "hf-vision", "efficientnet-lite0", "precomputed")


def infer_problem_type(num_labels: int, labels_ndim: int, integer_labels: bool) -> str:
    """The `problem_type` of a classifier whose config leaves it `None`, from its labels: one output is
    regression; a row of labels per example (multi-hot) is multi-label; integer class indices are
    single-label; anything else (floats, one per example) is multi-label, as in transformers."""
    if num_labels == 1:
        return "regression"
    if labels_ndim > 1:
        return "multi_label_classification"
    return "single_label_classification" if integer_labels else "multi_label_classification"


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"FLI2MoEConfig.{field}: {message}")


class FLI2MoEConfig(PreTrainedConfig):
    r"""Configuration of an FL-I2MoE classifier over frozen-encoder token features.

    Args:
        modalities (`list[dict]`):
            One dict per modality, in a fixed order. Required keys: `name` (str, unique) and
            `input_dim` (int, the frozen encoder's feature size). Optional keys: `max_tokens`
            (int, tokens per example produced by the encoder) and `encoder` (dict describing
            how to make the features from raw inputs, e.g.
            `{"type": "hf-text", "name_or_path": "roberta-base"}`; `type` is one of
            `hf-text`, `hf-vision`, `efficientnet-lite0`, `precomputed`).
        hidden_size (`int`, defaults to 256): width H of every expert.
        num_layers (`int`, defaults to 2): pre-LayerNorm blocks per expert.
        num_heads (`int`, defaults to 4): attention heads; must divide `hidden_size`.
        ffn_multiplier (`int`, defaults to 2): the feed-forward block is H -> ffn_multiplier*H -> H.
        dropout (`float`, defaults to 0.5): dropout in the experts and the router.
        router_layers (`int`, defaults to 2): linear layers in the router MLP (>= 1).
        router_hidden_size (`int`, defaults to 256): hidden width of the router MLP.
        router_temperature (`float`, defaults to 2.0): softmax temperature tau of the router.
        interaction_loss_weight (`float`, defaults to 0.5): lambda_int in
            `L = L_task + lambda_int * mean_e L_int(e)`.
        triplet_margin (`float`, defaults to 1.0): margin of the uniqueness experts' triplet loss.
        fill (`str`, defaults to `"noise"`): what fills a knocked-out modality's projected tokens in the
            interaction losses: `noise` (N(0, 1)), `zero` or `mean` (the dataset-mean token). (`replacement`,
            its name in earlier config files, is read as `fill`.)
        interaction_space (`str`, defaults to `"latent"`): where interaction losses compare the clean
            and perturbed passes: `latent` (pooled expert latents) or `logits`.
        token_masking (`float`, defaults to 0.0): in training, each example draws a rate uniformly from
            `[0, token_masking]` and each of its tokens is replaced by its modality's dataset-mean token (the
            explanations' fill for an absent token) with that probability, so that the model reads the mean
            token as "unknown" rather than as a value, in contexts as sparse as an interaction index samples.
            `0` turns it off.
        mixture (`str`, defaults to `"interaction"`): `interaction` (M uniqueness experts, a synergy and a
            redundancy expert, a router) or `dense` (one expert, no router, no interaction loss).
        num_labels / id2label / label2id / problem_type: as in every transformers classifier;
            `problem_type` is one of `regression`, `single_label_classification`,
            `multi_label_classification` (inferred from the labels when `None`).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear layers.
    """

    model_type = "fl_i2moe"
    # outputs that transformers.Trainer must not gather as predictions (scalars / per-batch diagnostics)
    keys_to_ignore_at_inference = [
        "latents",
        "task_loss",
        "interaction_loss",
        "expert_interaction_losses",
        "attentions",
    ]

    def __init__(
        self,
        modalities: list[dict[str, Any]] | None = None,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_multiplier: int = 2,
        dropout: float = 0.5,
        router_layers: int = 2,
        router_hidden_size: int = 256,
        router_temperature: float = 2.0,
        interaction_loss_weight: float = 0.5,
        triplet_margin: float = 1.0,
        fill: str | None = None,
        interaction_space: str = "latent",
        token_masking: float = 0.0,
        mixture: str = "interaction",
        initializer_range: float = 0.02,
        replacement: str | None = None,
        **kwargs: Any,
    ) -> None:
        if replacement is not None:  # the earlier name of `fill`, in older config.json and run config files
            if fill is not None and fill != replacement:
                raise ValueError(f"FLI2MoEConfig: fill={fill!r} and replacement={replacement!r} (its earlier name) disagree")
            fill = replacement
        if modalities is None:
            modalities = [
                {"name": "text", "input_dim": 384, "max_tokens": 64},
                {"name": "image", "input_dim": 1280, "max_tokens": 49},
            ]
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

    # --------------------------------------------------------------- validation
    def validate_fli2moe(self) -> None:
        """Check every FL-I2MoE field; raise `ValueError` naming the field and the allowed values."""
        _require(
            isinstance(self.modalities, list) and len(self.modalities) >= 1,
            "modalities",
            f"expected a non-empty list of dicts like {{'name': 'text', 'input_dim': 384}}, got {self.modalities!r}",
        )
        seen = set()
        for i, m in enumerate(self.modalities):
            _require(isinstance(m, dict), f"modalities[{i}]", f"expected a dict, got {type(m).__name__}")
            name = m.get("name")
            _require(
                isinstance(name, str) and name.isidentifier(),
                f"modalities[{i}].name",
                f"expected a non-empty identifier-like string (letters, digits, '_'), got {name!r}",
            )
            _require(name not in seen, f"modalities[{i}].name", f"duplicate modality name {name!r}")
            seen.add(name)
            dim = m.get("input_dim")
            _require(
                isinstance(dim, int) and not isinstance(dim, bool) and dim > 0,
                f"modalities[{i}].input_dim",
                f"expected a positive int (the encoder's feature size) for modality {name!r}, got {dim!r}",
            )
            mt = m.get("max_tokens")
            _require(
                mt is None or (isinstance(mt, int) and mt > 0),
                f"modalities[{i}].max_tokens",
                f"expected a positive int or None for modality {name!r}, got {mt!r}",
            )
            enc = m.get("encoder")
            if enc is not None:
                _require(
                    isinstance(enc, dict) and enc.get("type") in ENCODER_TYPES,
                    f"modalities[{i}].encoder",
                    f"expected a dict whose 'type' is one of {list(ENCODER_TYPES)}, got {enc!r}",
                )
        for field in ("hidden_size", "num_layers", "num_heads", "ffn_multiplier", "router_hidden_size"):
            v = getattr(self, field)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, field, f"expected a positive int, got {v!r}")
        _require(
            self.hidden_size % self.num_heads == 0,
            "num_heads",
            f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}",
        )
        _require(
            isinstance(self.router_layers, int) and self.router_layers >= 1,
            "router_layers",
            f"expected an int >= 1, got {self.router_layers!r}",
        )
        _require(
            isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
            "dropout",
            f"expected a float in [0, 1), got {self.dropout!r}",
        )
        _require(
            isinstance(self.token_masking, (int, float)) and not isinstance(self.token_masking, bool)
            and 0.0 <= self.token_masking <= 1.0,
            "token_masking",
            f"expected a float in [0, 1] (the largest per-example masking rate; 0 = off), got {self.token_masking!r}",
        )
        _require(
            isinstance(self.router_temperature, (int, float)) and self.router_temperature > 0,
            "router_temperature",
            f"expected a positive float, got {self.router_temperature!r}",
        )
        _require(
            isinstance(self.interaction_loss_weight, (int, float)) and self.interaction_loss_weight >= 0,
            "interaction_loss_weight",
            f"expected a float >= 0, got {self.interaction_loss_weight!r}",
        )
        _require(
            self.fill in FILLS,
            "fill",
            f"expected one of {list(FILLS)}, got {self.fill!r}",
        )
        _require(
            self.interaction_space in INTERACTION_SPACES,
            "interaction_space",
            f"expected one of {list(INTERACTION_SPACES)}, got {self.interaction_space!r}",
        )
        _require(self.mixture in MIXTURES, "mixture", f"expected one of {list(MIXTURES)}, got {self.mixture!r}")
        _require(
            self.problem_type is None or self.problem_type in PROBLEM_TYPES,
            "problem_type",
            f"expected one of {list(PROBLEM_TYPES)} or None, got {self.problem_type!r}",
        )
        _require(
            isinstance(self.num_labels, int) and self.num_labels >= 1,
            "num_labels",
            f"expected a positive int, got {self.num_labels!r}",
        )


__all__ = ["FLI2MoEConfig", "infer_problem_type"]
