"""`ExplainedExample`: one example validated and projected once, the source of every game of its heads.

An explanation asks many questions of one example: a game per head for the occlusion maps, a game for the
pair search, probability games for faithfulness and pair masking. They share the features, the masks, the
players and the projected tokens, and games of the same head share their reference values (the logits of
the full and the empty coalition). This object holds all of that, so that each is computed once:
`example.game_for(head, output=...)` returns a `FeatureGame` that reads from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._utils import eval_mode
from .results import grid_shape

__all__ = ["ExplainedExample", "Groups", "default_token_names", "resolve_player_mask", "word_groups"]

Groups = Mapping[str, Sequence[Sequence[int]]] | Sequence[Sequence[int]]
"""Players made of several tokens: `{modality: [[positions], ...]}` or `[[player indices], ...]`."""


def resolve_player_mask(
    model: Any,
    features: Mapping[str, torch.Tensor],
    attention_mask: Mapping[str, torch.Tensor] | None,
    player_mask: Mapping[str, torch.Tensor] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Validate one example (B = 1); return the bool attention masks `{name: (1, T)}` and player masks
    `{name: (T,)}` (player mask AND attention mask; a modality missing from `player_mask` uses its
    attention mask)."""
    batch, masks = model.check_inputs(features, attention_mask)
    if batch != 1:
        raise ValueError(
            f"this explains one example, but the features have batch size {batch}; "
            "pass one row, e.g. {name: x[i:i+1]} for every modality"
        )
    players = {}
    for name in model.modality_names:
        valid = masks[name][0]
        given = None if player_mask is None else player_mask.get(name)
        if given is None:
            players[name] = valid.clone()
            continue
        given = torch.as_tensor(given, device=valid.device).bool().reshape(-1)
        if given.numel() != valid.numel():
            raise ValueError(
                f"player_mask[{name!r}] has {given.numel()} entries, but features[{name!r}] has {valid.numel()} "
                "tokens; pass a (T,) or (1, T) mask with 1 for every token that may be a player"
            )
        players[name] = given & valid
    if player_mask is not None:
        extra = [n for n in player_mask if n not in model.modality_names]
        if extra:
            raise ValueError(f"player_mask has unknown modality {extra[0]!r}: expected {model.modality_names}")
    return masks, players


def word_groups(word_ids: Sequence[int | None]) -> list[list[int]]:
    """Token positions grouped by word, from a tokenizer's `word_ids()` (None or -1 = special token, skipped).

    Use as `groups={"text": word_groups(encoding.word_ids())}`."""
    by_word: dict[int, list[int]] = {}
    for position, word in enumerate(word_ids):
        if word is not None and int(word) >= 0:  # None or -1: a special token
            by_word.setdefault(int(word), []).append(position)
    return [by_word[w] for w in sorted(by_word, key=lambda w: by_word[w][0])]


def default_token_names(name: str, n_tokens: int) -> list[str]:
    """Display names of tokens that have no text: `"image 2,3"` (row, column) on a square grid, else `"audio 5"`."""
    rows, cols = grid_shape(n_tokens)
    return [f"{name} {i // cols},{i % cols}" if rows > 1 else f"{name} {i}" for i in range(n_tokens)]


def _batched(tensors: Mapping[str, torch.Tensor], dims: int) -> dict[str, torch.Tensor]:
    """Add the batch dimension to one example's tensors given without it."""
    return {n: (t if t.dim() == dims else t.unsqueeze(0)) for n, t in tensors.items()}


class ExplainedExample:
    """One example (B = 1) checked, trimmed and projected once; `game_for` makes each head's game from it.

    Args:
        model: an `FLI2MoEModel`.
        features: `{name: (1, T_m, D_m)}` (or `(T_m, D_m)`) frozen-encoder features.
        attention_mask: `{name: (1, T_m)}`, 1 = real token (omitted = all valid).
        player_mask: `{name: (T_m,)}`, 1 = may be a player (0 for special tokens); ANDed with the attention mask.
        tokens: `{name: [str]}` display text of each token; modalities without it get `default_token_names`.
        groups: the default players of its games (see `FeatureGame`), e.g. words from `word_groups`.
        truncated: the modalities whose raw input the encoder cut (said in the explanation's notes).

    Attributes: `features` and `attention_mask` (the example as given, bool masks, on the model's device),
    `player_mask` (`{name: (T_m,)}` bool, CPU), `lengths`, `tokens`, `groups`, `truncated`, `modality_names`.

    It keeps what it computed (the projection, the model's output, the reference logits, occlusion effects)
    for the model as it was: prepare a new one after the model's weights change.
    """

    def __init__(
        self,
        model: Any,
        features: Mapping[str, torch.Tensor],
        attention_mask: Mapping[str, torch.Tensor] | None = None,
        player_mask: Mapping[str, torch.Tensor] | None = None,
        *,
        tokens: Mapping[str, Sequence[str]] | None = None,
        groups: Groups | None = None,
        truncated: Sequence[str] = (),
    ) -> None:
        features = _batched(features, 3)
        if attention_mask is not None:
            attention_mask = _batched(attention_mask, 2)
        masks, players = resolve_player_mask(model, features, attention_mask, player_mask)
        self.model = model
        self.modality_names = list(model.modality_names)
        device = model.device
        self.features = {n: features[n].to(device) for n in self.modality_names}
        self.attention_mask = {n: masks[n].to(device) for n in self.modality_names}
        self.player_mask = {n: players[n].cpu() for n in self.modality_names}
        self.lengths = {n: int(features[n].shape[1]) for n in self.modality_names}
        given = dict(tokens or {})
        self.tokens = {n: list(given.get(n) or default_token_names(n, self.lengths[n])) for n in self.modality_names}
        self.groups = groups
        self.truncated = list(truncated)
        trimmed, trimmed_masks = model.trim_padding(features, masks)
        with torch.inference_mode(), eval_mode(model):
            projected = model.project({n: trimmed[n].to(device) for n in self.modality_names})
            fill_tokens = model.projected_modality_means()
        #: `{name: (1, T, H)}` projected tokens, trailing padding trimmed
        self.projected = {n: projected[n] for n in self.modality_names}
        #: `{name: (H,)}` the projected dataset-mean tokens (the fill of absent players)
        self.mean_tokens = {n: fill_tokens[n].to(projected[n].dtype) for n in self.modality_names}
        #: `{name: (1, T)}` bool attention masks of the trimmed tokens
        self.masks = {n: trimmed_masks[n].to(device) for n in self.modality_names}
        self._output: Any = None
        self._reference: dict[tuple, torch.Tensor] = {}
        self._effects: dict[tuple, Any] = {}

    @property
    def n_tokens(self) -> int:
        """Tokens after trimming trailing padding, over all modalities."""
        return sum(int(m.shape[1]) for m in self.masks.values())

    def model_output(self) -> Any:
        """The model's output on the whole example (no masking), computed once."""
        if self._output is None:
            with torch.inference_mode(), eval_mode(self.model):
                self._output = self.model(features=self.features, attention_mask=self.attention_mask)
        return self._output

    def game_for(self, head: int | str = "mixture", **options: Any):
        """The `FeatureGame` of one head on this example; `options` as for `FeatureGame` (target, fill, output,
        groups, chunk_size, autocast_dtype). `groups` defaults to the example's."""
        from .game import FeatureGame

        options.setdefault("groups", self.groups)
        return FeatureGame(self.model, self, head=head, **options)

    # ---------------------------------------------------------------- shared values
    def reference_logits(self, key: tuple, compute: Any) -> torch.Tensor:
        """Logits of a reference coalition, computed once per `key` (head, fill, autocast, which end)."""
        if key not in self._reference:
            self._reference[key] = compute()
        return self._reference[key]

    def occlusion_effects(self, game: Any) -> Any:
        """`occlusion_effects(game)`, computed once per value function (games equal in head, target, output,
        fill, players, chunk size and autocast share it)."""
        from .occlusion import occlusion_effects

        key = game.value_key
        if key not in self._effects:
            self._effects[key] = occlusion_effects(game)
        return self._effects[key]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}: {int(self.player_mask[n].sum())}/{self.lengths[n]}" for n in self.modality_names)
        return f"ExplainedExample(player tokens {sizes})"
