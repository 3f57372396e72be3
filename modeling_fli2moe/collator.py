"""Data collator from cached feature rows to the model's keyword arguments, for ``transformers.Trainer``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .configuration_fli2moe import FLI2MoEConfig, infer_problem_type
from .feature_cache import LABEL_COLUMNS, feature_columns

__all__ = ["FeatureCollator"]


def _stack(values: Sequence[Any], dtype: Any = None) -> torch.Tensor:
    """Stack rows with numpy (one single-threaded copy, outside torch's thread pool)."""
    arrays = [v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in values]
    out = np.stack(arrays)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return torch.from_numpy(out)


class FeatureCollator:
    """Stack rows of a :func:`~modeling_fli2moe.feature_cache.cache_features` split into
    ``{"features": {name: (B, T, D)}, "attention_mask": {name: long (B, T)}, "labels": ...}``.

    Features are cast up from the fp16 cache to ``dtype`` (float32). Labels come from ``labels`` or
    ``label``: long ``(B,)`` for single-label, float ``(B, C)`` for multi-label and float for
    regression (from ``config.problem_type``, else inferred as the model infers it:
    :func:`~modeling_fli2moe.configuration_fli2moe.infer_problem_type`).
    ``return_player_mask=True`` adds ``player_mask`` (bool, for the probes; not a model argument).
    Use it with ``TrainingArguments(remove_unused_columns=False)``.
    """

    def __init__(
        self, config: FLI2MoEConfig, dtype: torch.dtype = torch.float32, return_player_mask: bool = False
    ) -> None:
        self.names = list(config.modality_names)
        self.problem_type = config.problem_type
        self.num_labels = config.num_labels
        self.dtype = dtype
        self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else None
        self.return_player_mask = return_player_mask

    def _labels(self, rows: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor:
        labels = _stack([r[key] for r in rows])
        problem = self.problem_type
        if problem is None:
            integer = not labels.is_floating_point() and labels.dtype != torch.bool
            problem = infer_problem_type(self.num_labels, labels.ndim, integer)
        if problem == "single_label_classification":
            if labels.ndim != 1:
                raise ValueError(
                    f"single-label classification needs one class index per row, got {key!r} of shape "
                    f"{tuple(labels.shape)}; for multi-hot labels set problem_type='multi_label_classification'"
                )
            return labels.long()
        return labels.float()

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("FeatureCollator got an empty batch")
        first = rows[0]
        batch: dict[str, Any] = {"features": {}, "attention_mask": {}}
        if self.return_player_mask:
            batch["player_mask"] = {}
        for name in self.names:
            f, mk, pm = feature_columns(name)
            if f not in first or mk not in first:
                raise KeyError(
                    f"rows have no {f!r}/{mk!r} columns (they have {sorted(first)}). Collate rows of a dataset made "
                    "by cache_features for this config, and pass TrainingArguments(remove_unused_columns=False) "
                    "so that Trainer keeps them."
                )
            batch["features"][name] = _stack([r[f] for r in rows], self._np_dtype).to(self.dtype)
            batch["attention_mask"][name] = _stack([r[mk] for r in rows], np.int64)
            if self.return_player_mask:
                batch["player_mask"][name] = _stack([r[pm] for r in rows], np.bool_)
        key = next((k for k in LABEL_COLUMNS if k in first), None)
        if key is not None:
            batch["labels"] = self._labels(rows, key)
        return batch
