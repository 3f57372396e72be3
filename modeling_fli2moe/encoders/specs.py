"""Encoder specs (a modality's ``encoder`` dict): defaults filled in, checked against the modality, and
what kind of features (local or contextual) each one gives."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .sources import MINILM_NAME
from .text import DEFAULT_TEXT_MAX_TOKENS

__all__ = ["FEATURE_LOCALITIES", "describe_spec", "feature_locality", "resolve_encoder_spec"]


def resolve_encoder_spec(modality: Mapping[str, Any]) -> dict[str, Any]:
    """The modality's encoder spec with defaults filled in and ``max_tokens`` reconciled with the
    modality's; raise when they disagree or the modality has no encoder."""
    name = modality.get("name", "?")
    enc = modality.get("encoder")
    if not isinstance(enc, Mapping) or "type" not in enc:
        raise ValueError(
            f"modality {name!r} has no encoder spec; add e.g. \"encoder\": {{\"type\": \"hf-text\", "
            f"\"name_or_path\": \"{MINILM_NAME}\"}} to its entry in config.modalities"
        )
    spec = copy.deepcopy(dict(enc))
    mt = modality.get("max_tokens")
    kind = spec["type"]
    if kind == "hf-text":
        if spec.get("max_tokens") is None:
            spec["max_tokens"] = mt or DEFAULT_TEXT_MAX_TOKENS
        elif mt is not None and mt != spec["max_tokens"]:
            raise ValueError(
                f"modality {name!r}: max_tokens={mt} but its encoder's max_tokens={spec['max_tokens']}; make them equal"
            )
    elif kind == "precomputed":
        spec.setdefault("dim", modality.get("input_dim"))
        spec.setdefault("max_tokens", mt)
    return spec


FEATURE_LOCALITIES = ("local", "contextual", "unknown")


def feature_locality(spec: Mapping[str, Any] | None) -> str:
    """Whether an encoder spec gives *local* features (a token's feature depends on that token's input
    alone: text ``layer: 0``, image ``tokens: "cells"``) or *contextual* ones (every token has seen the
    whole input, so evidence leaks between tokens and masking one token's feature does not remove its
    evidence). ``precomputed`` specs may declare ``"locality"``; otherwise ``"unknown"``."""
    if not spec:
        return "unknown"
    kind = spec.get("type")
    if kind == "hf-text":
        return "local" if spec.get("layer", -1) == 0 else "contextual"
    if kind == "hf-vision":
        return "contextual"
    if kind == "efficientnet-lite0":
        return "local" if spec.get("tokens", "map") == "cells" else "contextual"
    locality = spec.get("locality", "unknown")
    return locality if locality in FEATURE_LOCALITIES else "unknown"


def describe_spec(spec: Mapping[str, Any]) -> str:
    """A spec's type and model name, for messages (``hf-text 'roberta-base'``)."""
    return spec["type"] + (f" {spec['name_or_path']!r}" if spec.get("name_or_path") else "")
