"""``precomputed``: features computed elsewhere, passed through and padded."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .base import FrozenEncoder, example_label

logger = logging.getLogger(__name__)

__all__ = ["PrecomputedEncoder"]


class PrecomputedEncoder(FrozenEncoder):
    """Pass-through for features computed elsewhere: each raw value is a ``(T_i, D)`` array, padded
    (or cut, with a warning) to ``max_tokens``; every real row is a player."""

    modality_kind = "precomputed"
    spec_type = "precomputed"

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        dim, max_tokens = spec.get("dim"), spec.get("max_tokens")
        if not isinstance(dim, int) or not isinstance(max_tokens, int):
            raise ValueError(f"precomputed encoder spec needs int 'dim' and 'max_tokens', got {spec!r}")
        super().__init__(spec, dim, max_tokens, batch_size)

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        b, t, d = len(raw_batch), self.num_tokens, self.output_dim
        feats = torch.zeros(b, t, d)
        mask = torch.zeros(b, t, dtype=torch.long)
        truncated = []
        for i, x in enumerate(raw_batch):
            arr = torch.as_tensor(np.asarray(x, dtype=np.float32))
            if arr.ndim != 2 or arr.shape[1] != d:
                raise ValueError(f"{example_label(self.modality_name, ids, i)}: expected a (T, {d}) array, got {tuple(arr.shape)}")
            n = min(arr.shape[0], t)
            truncated.append(arr.shape[0] > t)
            feats[i, :n], mask[i, :n] = arr[:n], 1
        if any(truncated):
            logger.warning("modality %r: %d example(s) had more than %d tokens; cut", self.modality_name, sum(truncated), t)
        return {"inputs": {"features": feats}, "attention_mask": mask, "player_mask": mask.bool(), "truncated": truncated}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
