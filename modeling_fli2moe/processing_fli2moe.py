"""``FLI2MoEProcessor``: raw inputs (strings, PIL images, paths) -> model inputs, with the checkpoint's encoders.

The encoders are rebuilt from ``config.modalities`` (the single source of truth), so a checkpoint
folder needs nothing besides ``config.json``; ``save_pretrained`` adds a small
``fli2moe_processor.json`` recording the processor settings and the encoder cache keys.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configuration_fli2moe import FLI2MoEConfig
from .encoders import FrozenEncoder, build_encoders, encoder_cache_key, resolve_encoder_spec

logger = logging.getLogger(__name__)

__all__ = ["FLI2MoEProcessor", "FLI2MoEInputs", "PROCESSOR_FILE"]

PROCESSOR_FILE = "fli2moe_processor.json"
_FORMAT_VERSION = 1


class FLI2MoEInputs(dict):
    """The processor's output: ``features`` and ``attention_mask`` (the model's arguments, dicts by
    modality) plus ``player_mask``, ``truncated`` (per modality, per example) and, for text
    modalities, ``tokens`` and ``word_ids`` (for display). Keys also read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"FLI2MoEInputs has no {key!r}; keys: {sorted(self)}") from None

    def model_inputs(self) -> dict[str, dict[str, torch.Tensor]]:
        """Only what ``FLI2MoEModel.forward`` takes: ``model(**inputs.model_inputs())``."""
        return {"features": self["features"], "attention_mask": self["attention_mask"]}

    def to(self, device: str | torch.device) -> FLI2MoEInputs:
        """Move the tensors (features and masks) to ``device``."""
        out = FLI2MoEInputs(self)
        for key in ("features", "attention_mask", "player_mask"):
            out[key] = {n: t.to(device) for n, t in self[key].items()}
        return out


def _as_batch(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        return list(value)
    return [value]  # one example: a string, a PIL image, a path, an array


class FLI2MoEProcessor:
    """Encodes raw examples with each modality's frozen encoder (built from ``config.modalities``).

    ``processor({"text": ["a caption"], "image": [pil_image]})`` returns :class:`FLI2MoEInputs`.
    Inputs are keyed by modality name (or by the modality's raw ``column``); extra keys are ignored.
    ``load_encoders=False`` defers building the encoders to the first call.
    """

    def __init__(
        self,
        config: FLI2MoEConfig,
        encoders: Mapping[str, FrozenEncoder] | None = None,
        *,
        load_encoders: bool = True,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        if not isinstance(config, FLI2MoEConfig):
            raise TypeError(f"FLI2MoEProcessor needs an FLI2MoEConfig, got {type(config).__name__}")
        self.config = config
        self.device = device
        self.batch_size = int(batch_size)
        self._encoders: dict[str, FrozenEncoder] | None = dict(encoders) if encoders is not None else None
        if self._encoders is None and load_encoders:
            self._encoders = build_encoders(config, batch_size=self.batch_size, device=device)

    @property
    def encoders(self) -> dict[str, FrozenEncoder]:
        """The frozen encoder of each modality (built on first use)."""
        if self._encoders is None:
            self._encoders = build_encoders(self.config, batch_size=self.batch_size, device=self.device)
        missing = [n for n in self.config.modality_names if n not in self._encoders]
        if missing:
            raise ValueError(f"no encoder given for modality {missing[0]!r}; expected {self.config.modality_names}")
        return self._encoders

    @property
    def modality_names(self) -> list[str]:
        return self.config.modality_names

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | os.PathLike,
        *,
        load_encoders: bool = True,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        **config_kwargs: Any,
    ) -> FLI2MoEProcessor:
        """Read ``config.json`` (and ``fli2moe_processor.json`` if present) from a checkpoint folder
        and rebuild the encoders."""
        path = Path(checkpoint_dir).expanduser()
        if path.is_dir() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json: pass a folder written by FLI2MoEModel.save_pretrained (or "
                "FLI2MoEProcessor.save_pretrained)"
            )
        config = FLI2MoEConfig.from_pretrained(str(path) if path.is_dir() else os.fspath(checkpoint_dir), **config_kwargs)
        saved: dict[str, Any] = {}
        if (path / PROCESSOR_FILE).is_file():
            saved = json.loads((path / PROCESSOR_FILE).read_text())
            stale = [
                n
                for n, rec in (saved.get("modalities") or {}).items()
                if n in config.modality_names and rec.get("encoder_key") not in (None, _key_or_none(config.modality(n)))
            ]
            if stale:
                logger.warning(
                    "the encoder of modality %r differs from the one recorded in %s when it was saved (other weights "
                    "or versions); features may not match those the model was trained on",
                    stale[0],
                    path / PROCESSOR_FILE,
                )
        bs = batch_size if batch_size is not None else int(saved.get("batch_size", 32))
        return cls(config, load_encoders=load_encoders, device=device, batch_size=bs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``fli2moe_processor.json`` (and ``config.json`` when the folder has none yet)."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "config.json").is_file():
            self.config.save_pretrained(str(path))
        record = {
            "processor_class": type(self).__name__,
            "format_version": _FORMAT_VERSION,
            "batch_size": self.batch_size,
            "modalities": {
                m["name"]: {
                    "column": m.get("column", m["name"]),
                    "input_dim": m.get("input_dim"),
                    "max_tokens": m.get("max_tokens"),
                    "encoder": _spec_or_none(m),
                    "encoder_key": _key_or_none(m),
                }
                for m in self.config.modalities
            },
        }
        out = path / PROCESSOR_FILE
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")
        return out

    # ------------------------------------------------------------------ encoding
    def raw_input(self, inputs: Mapping[str, Any], modality: Mapping[str, Any]) -> Any:
        """The raw value of one modality in `inputs`, looked up by the modality's name or its dataset column."""
        name, col = modality["name"], modality.get("column", modality["name"])
        for key in (name, col):
            if key in inputs and inputs[key] is not None:
                return inputs[key]
        raise ValueError(
            f"inputs are missing modality {name!r}: this model needs raw inputs for {self.modality_names} "
            f"(got keys {sorted(map(str, inputs))})"
        )

    def __call__(self, inputs: Mapping[str, Any], ids: Sequence[Any] | None = None) -> FLI2MoEInputs:
        """Encode a batch: ``{modality: list of raw examples}`` (a single example is a batch of one)."""
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"inputs must be a dict {{modality name: raw inputs}} with keys {self.modality_names}, "
                f"got {type(inputs).__name__}"
            )
        batches = {m["name"]: _as_batch(self.raw_input(inputs, m)) for m in self.config.modalities}
        sizes = {n: len(b) for n, b in batches.items()}
        if 0 in sizes.values():
            raise ValueError(f"modality {min(sizes, key=sizes.get)!r} got an empty list of inputs")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"every modality needs the same number of examples, got {sizes}")
        if ids is not None and len(ids) != next(iter(sizes.values())):
            raise ValueError(f"ids has {len(ids)} entries for {next(iter(sizes.values()))} examples")
        out = FLI2MoEInputs(features={}, attention_mask={}, player_mask={}, truncated={}, tokens={}, word_ids={})
        encoders = self.encoders
        for name, batch in batches.items():
            enc = encoders[name].encode(batch, ids=ids, modality=name)
            out["features"][name] = enc["features"]
            out["attention_mask"][name] = enc["attention_mask"].long()
            out["player_mask"][name] = enc["player_mask"]
            out["truncated"][name] = enc.get("truncated", [False] * len(batch))
            if "tokens" in enc:
                out["tokens"][name] = enc["tokens"]
                out["word_ids"][name] = enc["word_ids"]
        return out

    def __repr__(self) -> str:
        specs = {m["name"]: _spec_or_none(m) for m in self.config.modalities}
        return f"{type(self).__name__}(modalities={specs}, batch_size={self.batch_size})"


def _key_or_none(modality: Mapping[str, Any]) -> str | None:
    if not modality.get("encoder"):
        return None
    try:
        return encoder_cache_key(modality)
    except Exception:  # noqa: BLE001 - the record is informative only
        return None


def _spec_or_none(modality: Mapping[str, Any]) -> dict[str, Any] | None:
    return resolve_encoder_spec(modality) if modality.get("encoder") else None
