"""``hf-text``: any transformers text model, one token feature per (sub)word token."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .base import FrozenEncoder, example_label, freeze
from .sources import hf_source, loading

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TEXT_MAX_TOKENS", "HFTextEncoder"]

DEFAULT_TEXT_MAX_TOKENS = 64


class HFTextEncoder(FrozenEncoder):
    """Any transformers text model; last hidden layer, padded/truncated to ``max_tokens``."""

    modality_kind = "text"
    spec_type = "hf-text"

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name, path, kw = hf_source(spec, "hf-text")
        with loading("hf-text", name):
            hf_config = AutoConfig.from_pretrained(path, **kw)
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
            model = AutoModel.from_pretrained(path, **kw)
        if getattr(hf_config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        max_tokens = int(spec.get("max_tokens") or DEFAULT_TEXT_MAX_TOKENS)
        limit = getattr(hf_config, "max_position_embeddings", None)
        if limit is not None and getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa-style position ids start after the padding index
        if limit is not None and max_tokens > limit:
            raise ValueError(
                f"hf-text encoder {name!r}: max_tokens={max_tokens} exceeds the model's {limit} positions; "
                f"set max_tokens <= {limit}"
            )
        dim = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "d_model", None)
        if dim is None:
            raise ValueError(f"hf-text encoder {name!r}: cannot tell its feature size (no hidden_size in its config)")
        super().__init__({**spec, "max_tokens": max_tokens}, int(dim), max_tokens, batch_size)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            raise ValueError(f"hf-text encoder {name!r}: its tokenizer has no padding token; add one to the tokenizer")
        layer = spec.get("layer", -1)
        n_layers = getattr(hf_config, "num_hidden_layers", None)
        if isinstance(layer, bool) or not isinstance(layer, int) or (
            n_layers is not None and not -(n_layers + 1) <= layer <= n_layers
        ):
            raise ValueError(
                f"hf-text encoder {name!r}: layer must be an int in [-{(n_layers or 0) + 1}, {n_layers}] "
                f"(0 = embedding output, -1 = last layer), got {layer!r}"
            )
        self.layer = layer
        self.tokenizer = tokenizer
        self.model = model
        self.allow_empty = bool(spec.get("allow_empty", False))
        self._input_names = set(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        freeze(self)

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        texts = []
        for i, t in enumerate(raw_batch):
            if not isinstance(t, str):
                raise TypeError(f"{example_label(self.modality_name, ids, i)}: expected a text string, got {type(t).__name__}")
            if not t.strip() and not self.allow_empty:
                raise ValueError(
                    f"{example_label(self.modality_name, ids, i)}: empty caption/text. Drop the example or give it a "
                    "placeholder text, or set the encoder spec's allow_empty=true (it then has no players)."
                )
            texts.append(t)
        # pad to the longest text only (the model runs on fewer positions); masks are padded to
        # max_tokens here and the features by encode(), with zeros
        enc = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.num_tokens,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        pad = self.num_tokens - enc["input_ids"].shape[1]
        attn = torch.nn.functional.pad(enc["attention_mask"].long(), (0, pad))
        special = torch.nn.functional.pad(enc.pop("special_tokens_mask").bool(), (0, pad), value=True)
        if getattr(enc, "encodings", None):
            truncated = [len(e.overflowing) > 0 for e in enc.encodings]
            word_ids = [[-1 if w is None else int(w) for w in enc.word_ids(b)] for b in range(len(texts))]
        else:  # slow tokenizer: count the full length
            full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
            truncated = [len(f) > self.num_tokens for f in full]
            word_ids = [[-1] * len(row) for row in enc["input_ids"]]
        n_trunc = sum(truncated)
        if n_trunc:
            logger.warning(
                "modality %r: %d of %d text(s) were longer than max_tokens=%d and were truncated",
                self.modality_name,
                n_trunc,
                len(texts),
                self.num_tokens,
            )
        lengths = attn.sum(1).tolist()
        ids_list = enc["input_ids"].tolist()
        tokens = [self.tokenizer.convert_ids_to_tokens(row[:n]) for row, n in zip(ids_list, lengths)]
        inputs = {k: v for k, v in enc.items() if k in self._input_names or k in ("input_ids", "attention_mask")}
        return {
            "inputs": inputs,
            "attention_mask": attn,
            "player_mask": attn.bool() & ~special,
            "tokens": tokens,
            "word_ids": [w[:n] for w, n in zip(word_ids, lengths)],
            "truncated": truncated,
        }

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.layer == -1:
            return self.model(**inputs).last_hidden_state
        return self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]
