"""The input-level game of one example: the frozen encoders re-run on the masked raw input.

Where the feature-level `FeatureGame` replaces an absent player's *feature* by the mean token, this
game removes the player from the *input* and encodes again: an absent word's word-pieces become the
tokenizer's mask token, an absent image region's pixels become the normalisation mean (zero after
normalisation). On contextual features the two games differ, because the other tokens' features still
carry the masked token's evidence; the input-level game is then the faithful reference, at the price
of one encoder pass per coalition (`evaluations` counts them; see `bench/leakage_audit.py` for the
cost against the feature-level game).

Players, their order and the target are those of the `FeatureGame` built from the same processor
output, so values of the two games can be compared coalition by coalition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..configuration_fli2moe import ENCODER_TYPES
from ._utils import eval_mode, target_values
from .game import ExplainedExample, FeatureGame

logger = logging.getLogger(__name__)

__all__ = ["InputGame"]

#: the encoder types whose raw input (text, an image) the game can mask: every one but precomputed features
MASKABLE_ENCODER_TYPES = tuple(t for t in ENCODER_TYPES if t != "precomputed")


class InputGame:
    """Value function of one raw example over coalitions of its players, by re-encoding the masked input.

    Args:
        model: an `FLI2MoEModel`.
        processor: the `FLI2MoEProcessor` of the checkpoint (its encoders are re-run).
        inputs: one raw example `{modality: raw value}` (a string, an image).
        head / output / target / groups: as for `FeatureGame` (the players are the same).
        batch_size: coalitions per encoder pass.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        inputs: Mapping[str, Any],
        head: int | str = "mixture",
        output: str = "log_odds",
        target: int | Sequence[int] | None = None,
        groups: Mapping[str, Sequence[Sequence[int]]] | None = None,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.processor = processor
        self.batch_size = int(batch_size)
        enc = processor(inputs)
        example = ExplainedExample(model, enc["features"], enc["attention_mask"], enc["player_mask"])
        self.feature_game = FeatureGame(example, head=head, output=output, target=target, groups=groups)
        fg = self.feature_game
        self.head, self.output, self.target = fg.head, fg.output, fg.target
        self.players, self.player_positions = fg.players, fg.player_positions
        self.n_players, self.modality_of_player = fg.n_players, fg.modality_of_player
        self.modality_names = fg.modality_names
        self.evaluations = 0
        self._attention_mask = enc["attention_mask"]
        self._encoders = processor.encoders
        self._raw = {}
        for m in model.config.modalities:
            name = m["name"]
            encoder = self._encoders[name]
            kind = encoder.spec.get("type")
            if kind not in MASKABLE_ENCODER_TYPES:
                raise ValueError(
                    f"modality {name!r}: the input-level game masks text and images only; its encoder type {kind!r} "
                    "has no raw input to mask (use the feature-level FeatureGame)"
                )
            raw = processor.raw_input(inputs, m)
            self._raw[name] = encoder.preprocess([raw])["inputs"]
        self.value_full = float(self(torch.ones(1, self.n_players, dtype=torch.bool))[0])
        self.value_empty = float(self(torch.zeros(1, self.n_players, dtype=torch.bool))[0])
        self.evaluations = 0

    def _masked_inputs(self, name: str, absent: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder inputs of modality `name` for `k` coalitions; `absent (k, T)` marks masked tokens."""
        encoder = self._encoders[name]
        raw = self._raw[name]
        k = absent.shape[0]
        if encoder.spec.get("type") == "hf-text":
            ids = raw["input_ids"].expand(k, -1).clone()
            tok = encoder.tokenizer
            fill = tok.mask_token_id if tok.mask_token_id is not None else tok.unk_token_id
            if fill is None:
                raise ValueError(f"modality {name!r}: the tokenizer has neither a mask nor an unknown token to mask with")
            width = ids.shape[1]
            ids[absent[:, :width]] = fill
            out = {key: v.expand(k, *v.shape[1:]) for key, v in raw.items() if key != "input_ids"}
            out["input_ids"] = ids
            return out
        pixels = raw["pixel_values"].expand(k, -1, -1, -1).clone()
        grid = math.isqrt(encoder.num_tokens)
        step_h, step_w = pixels.shape[2] // grid, pixels.shape[3] // grid
        for b, t in zip(*(x.tolist() for x in absent.nonzero(as_tuple=True))):
            r, c = divmod(t, grid)
            pixels[b, :, r * step_h : (r + 1) * step_h, c * step_w : (c + 1) * step_w] = 0.0
        return {"pixel_values": pixels.contiguous(memory_format=torch.channels_last)}

    def __call__(self, coalitions: torch.Tensor) -> torch.Tensor:
        """Values `(k,)` of coalitions `(k, n_players)` bool; each row costs one pass of every encoder."""
        coalitions = torch.as_tensor(coalitions).bool()
        if coalitions.dim() != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(f"coalitions must have shape (k, {self.n_players}), got {tuple(coalitions.shape)}")
        out = torch.empty(coalitions.shape[0], dtype=torch.float32)
        for start in range(0, coalitions.shape[0], self.batch_size):
            chunk = coalitions[start : start + self.batch_size]
            k = chunk.shape[0]
            features, masks = {}, {}
            for name in self.modality_names:
                t = self._attention_mask[name].shape[1]
                absent = torch.zeros(k, t, dtype=torch.bool)
                for p in self.feature_game.players_of(name).tolist():
                    absent[:, self.player_positions[p]] = ~chunk[:, p : p + 1]
                encoder = self._encoders[name]
                with torch.inference_mode(), encoder.autocast():
                    feats = encoder(**{key: v.to(encoder.device) for key, v in self._masked_inputs(name, absent).items()})
                feats = feats.float().cpu()
                if feats.shape[1] < t:
                    feats = torch.nn.functional.pad(feats, (0, 0, 0, t - feats.shape[1]))
                mask = self._attention_mask[name].expand(k, -1)
                features[name] = feats * mask.unsqueeze(-1).to(feats.dtype)
                masks[name] = mask
            with torch.inference_mode(), eval_mode(self.model):
                logits = self.model.head_logits(features, masks, head=self.head).float()
            out[start : start + k] = target_values(logits, self.target, self.output, self.model.config.problem_type)
        self.evaluations += coalitions.shape[0]
        return out

    def __repr__(self) -> str:
        return f"InputGame(head={self.head!r}, n_players={self.n_players}, output={self.output!r}, target={self.target})"
