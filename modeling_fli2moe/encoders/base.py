"""The frozen-encoder base class: raw examples -> padded token features, masks and display extras."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["AUTOCAST_DTYPES", "EncoderOutput", "FrozenEncoder", "example_label", "freeze"]

#: an encoder spec's ``dtype`` -> the autocast dtype its forward runs in (None: float32, no autocast)
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


class EncoderOutput(dict):
    """What ``FrozenEncoder.encode`` returns: a dict (``features``, ``attention_mask``, ``player_mask``
    and, for text, ``tokens``, ``word_ids``, ``truncated``) whose keys also read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"EncoderOutput has no {key!r}; keys: {sorted(self)}") from None


def freeze(module: nn.Module) -> None:
    """Eval mode and no gradients for every parameter of `module`."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def example_label(modality: str, ids: Sequence[Any] | None, i: int) -> str:
    """How error messages name example `i` of a batch: by its id when `ids` are given."""
    who = f"id {ids[i]!r}" if ids is not None else f"example {i}"
    return f"modality {modality!r}, {who}"


class FrozenEncoder(nn.Module):
    """A frozen encoder: raw examples -> ``features`` (B, T, D), ``attention_mask`` and ``player_mask``.

    Subclasses implement ``preprocess`` (raw list -> tensors + display extras) and a pure ``forward``.
    The module stays in eval mode (``train()`` is a no-op) and never tracks gradients.
    """

    modality_kind: ClassVar[str] = "any"
    #: the encoder spec's ``type`` (one of the config's ``ENCODER_TYPES``)
    spec_type: ClassVar[str] = ""
    #: Examples per forward call inside a batch on CPU (None: the whole batch). Small micro-batches
    #: keep convolution activations in cache: EfficientNet-Lite0 runs ~2.4x faster at 4 than at 32.
    micro_batch: ClassVar[int | None] = None

    def __init__(self, spec: Mapping[str, Any], output_dim: int, num_tokens: int, batch_size: int = 32) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.output_dim = int(output_dim)
        self.num_tokens = int(num_tokens)
        self.batch_size = int(batch_size)
        self.modality_name = "?"  # set by encoder_for_modality, used in error messages
        self.calls = 0  # number of encode() calls (tests and the feature cache read it)
        dtype = self.spec.get("dtype", "float32")
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"encoder spec {self.spec!r}: dtype must be one of {list(AUTOCAST_DTYPES)}, got {dtype!r}")
        self.autocast_dtype = AUTOCAST_DTYPES[dtype]

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen: always eval mode (no dropout in the features)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        """Raw examples -> ``{"inputs": {tensors for forward}, "attention_mask", "player_mask", ...}``."""
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in: autocast in the spec's ``dtype``, or nothing for float32.
        Callers that run ``forward`` themselves (not through ``encode``) enter it too."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def encode(
        self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None, modality: str | None = None
    ) -> EncoderOutput:
        """Encode a list of raw examples in chunks of ``batch_size``.

        Returns ``features`` (B, T, D) float32 (zeros at padded positions), ``attention_mask`` (B, T)
        long, ``player_mask`` (B, T) bool (valid and not a special token), and for text ``tokens`` /
        ``word_ids`` (per example, over the valid positions) and ``truncated`` (per example).
        ``ids`` (optional, one per example) and ``modality`` name examples in error messages.
        """
        if modality is not None and modality != self.modality_name:
            previous, self.modality_name = self.modality_name, modality
            try:
                return self.encode(raw_batch, ids)
            finally:
                self.modality_name = previous
        if isinstance(raw_batch, (str, bytes)) or not isinstance(raw_batch, Sequence):
            raise TypeError(
                f"modality {self.modality_name!r}: encode() takes a list of examples, got {type(raw_batch).__name__}"
            )
        if len(raw_batch) == 0:
            raise ValueError(f"modality {self.modality_name!r}: encode() got an empty batch")
        self.calls += 1
        parts: list[dict[str, Any]] = []
        device = self.device
        for start in range(0, len(raw_batch), self.batch_size):
            chunk = list(raw_batch[start : start + self.batch_size])
            chunk_ids = None if ids is None else list(ids[start : start + self.batch_size])
            pre = self.preprocess(chunk, chunk_ids)
            inputs = {k: v.to(device) for k, v in pre.pop("inputs").items()}
            n = len(chunk)
            step = self.micro_batch if (self.micro_batch and device.type == "cpu") else n
            with torch.inference_mode(), self.autocast():
                feats = [self(**{k: v[i : i + step] for k, v in inputs.items()}).float() for i in range(0, n, step)]
            out = torch.cat(feats).cpu()
            if out.shape[1] < self.num_tokens:  # dynamic padding: the model ran on the longest text only
                out = torch.nn.functional.pad(out, (0, 0, 0, self.num_tokens - out.shape[1]))
            mask = pre["attention_mask"]
            if not bool(mask.all()):  # padded positions are zeros, whatever else is in the batch
                out = out * mask.unsqueeze(-1).to(out.dtype)
            pre["features"] = out
            parts.append(pre)
        out = EncoderOutput()
        for key in parts[0]:
            vals = [p[key] for p in parts]
            out[key] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
        return out

    def extra_repr(self) -> str:
        return f"spec={self.spec}, num_tokens={self.num_tokens}, output_dim={self.output_dim}"
