"""`FLI2MoEProcessor`: raw inputs (strings, PIL images or paths) -> model inputs, with the checkpoint's encoders."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .configuration_fli2moe import FLI2MoEConfig
from .encoders import FrozenEncoder, build_encoders

logger = logging.getLogger(__name__)

PROCESSOR_FILE = "fli2moe_processor.json"


class FLI2MoEProcessor:
    """Rebuilds each modality's frozen encoder from the config and encodes raw examples.

    `processor({"text": ["a caption"], "image": [pil_image]})` returns `features`, `attention_mask`
    (both ready for the model), `player_mask` (tokens that may be players in the probes), `tokens`
    (strings for display) and `truncated` (per modality, per example).
    """

    def __init__(self, config: FLI2MoEConfig, load_encoders: bool = True) -> None:
        self.config = config
        self._encoders: dict[str, FrozenEncoder] | None = build_encoders(config) if load_encoders else None

    @property
    def encoders(self) -> dict[str, FrozenEncoder]:
        if self._encoders is None:
            self._encoders = build_encoders(self.config)
        return self._encoders

    @classmethod
    def from_pretrained(cls, checkpoint: str | os.PathLike, **kwargs: Any) -> "FLI2MoEProcessor":
        return cls(FLI2MoEConfig.from_pretrained(checkpoint, **kwargs))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the encoder specs (also in config.json) so the folder documents how features are made."""
        path = Path(directory) / PROCESSOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        specs = {m["name"]: {"encoder": m.get("encoder"), "max_tokens": m.get("max_tokens"),
                             "column": m.get("column", m["name"])} for m in self.config.modalities}
        path.write_text(json.dumps({"processor_class": type(self).__name__, "modalities": specs}, indent=2) + "\n")
        return path

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(inputs, dict):
            raise TypeError(f"inputs must be a dict {{modality: raw input(s)}} with keys {self.config.modality_names}")
        missing = [n for n in self.config.modality_names if n not in inputs or inputs[n] is None]
        if missing:
            raise ValueError(f"missing modality {missing[0]!r}: this model needs {self.config.modality_names}")
        out: dict[str, Any] = {"features": {}, "attention_mask": {}, "player_mask": {}, "tokens": {}, "truncated": {}}
        for name, enc in self.encoders.items():
            raw = inputs[name]
            batch = raw if isinstance(raw, (list, tuple)) else [raw]
            if not batch:
                raise ValueError(f"modality {name!r} got an empty list of inputs")
            for i, item in enumerate(batch):
                if isinstance(item, str) and enc.__class__.__name__ == "HFTextEncoder" and not item.strip():
                    raise ValueError(f"modality {name!r}: example {i} is an empty text; give at least one word")
            encoded = enc.encode(list(batch))
            if any(encoded.truncated):
                logger.warning("modality %r: text longer than %s tokens was truncated", name, getattr(enc, "max_tokens", "?"))
            out["features"][name] = encoded.features
            out["attention_mask"][name] = encoded.attention_mask.long()
            out["player_mask"][name] = encoded.player_mask
            out["tokens"][name] = encoded.tokens
            out["truncated"][name] = encoded.truncated
        return out
