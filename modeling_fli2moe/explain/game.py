"""The feature-level game of one example: a value function over boolean coalitions of tokens.

`ExplainedExample` is one example validated and projected once, the source of every game of its heads: an
explanation asks many questions of one example (a game per head for the occlusion maps, a game for the pair
search, probability games for faithfulness and pair masking), which share the features, the masks, the
players and the projected tokens, and games of the same head share their reference values (the logits of
the full and the empty coalition). `example.game_for(head, output=...)` makes a `FeatureGame` that reads
from it; `FeatureGame(example, ...)` is the same with the ungrouped tokens as players by default.

Players are the valid, non-special tokens of every modality (optionally grouped: word-pieces into
words, patches into cells; see `players`). A coalition is a boolean mask over players; an absent player's
projected token is replaced by its modality's dataset-mean token (``fill="mean"``) or removed from
attention and pooling (``fill="remove"``). The value is the target logit (or probability) of one head.
Every chunk of coalitions is built with one ``torch.where`` in the projected space and evaluated in one
batched forward under ``torch.inference_mode``.

Estimators (shapley, faithfulness, pair masking) only need ``game(coalitions)``, ``n_players``,
``modality_of_player``, ``value_full`` and ``value_empty``, as with shapiq's games.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..configuration_fli2moe import FILLS
from ._utils import check_target, eval_mode, resolve_head, select_target, target_values
from .occlusion import occlusion_effects, occlusion_rows
from .players import Groups, build_players, default_token_names, resolve_player_mask
from .results import OcclusionEffects

logger = logging.getLogger(__name__)

__all__ = ["GAME_FILLS", "OUTPUTS", "ExplainedExample", "FeatureGame", "memory_chunk_size", "require_example",
           "shared_values"]

#: the fills (of the config's one vocabulary, `FILLS`) a game can do for an absent player's projected token: the
#: dataset-mean token or nothing (masked out); noise and zeros are training's knock-outs only
GAME_FILLS = tuple(fill for fill in FILLS if fill in ("mean", "remove"))
OUTPUTS = ("log_odds", "logit", "probability")


def memory_chunk_size(model: Any, tokens: int, head: str, fraction: float = 0.25, limit: int = 1024) -> int:
    """Coalitions per forward pass that fit in `fraction` of the free memory (the CUDA device's, else the
    host's available memory), at about 24 fp32 activations of width H per token and evaluated expert;
    at most `limit` (larger chunks do not run faster)."""
    device = model.device
    free = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            pass
    if free is None:
        return 256
    experts = model.config.num_experts if head == "mixture" else 1
    per_coalition = 4 * 24 * max(tokens, 1) * model.config.hidden_size * experts
    return int(max(1, min(limit, fraction * free // per_coalition)))


# ------------------------------------------------------------------------------------------- example
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

    def game_for(self, head: int | str = "mixture", **options: Any) -> FeatureGame:
        """The `FeatureGame` of one head on this example; `options` as for `FeatureGame` (target, fill, output,
        groups, chunk_size, autocast_dtype). `groups` defaults to the example's."""
        options.setdefault("groups", self.groups)
        return FeatureGame(self, head=head, **options)

    # ---------------------------------------------------------------- shared values
    def reference_logits(self, key: tuple, compute: Any) -> torch.Tensor:
        """Logits of a reference coalition, computed once per `key` (head, fill, autocast, which end)."""
        if key not in self._reference:
            self._reference[key] = compute()
        return self._reference[key]

    def occlusion_effects(self, game: FeatureGame) -> OcclusionEffects:
        """`occlusion_effects(game)`, computed once per value function (games equal in head, target, output,
        fill, players, chunk size and autocast share it)."""
        key = game.value_key
        if key not in self._effects:
            self._effects[key] = occlusion_effects(game)
        return self._effects[key]

    def occlusion_effects_of(self, games: Sequence[FeatureGame]) -> list[OcclusionEffects]:
        """`occlusion_effects` of several games, those not computed yet in one pass where they share it (the
        heads of one example: `shared_values`)."""
        todo = list({g.value_key: g for g in games if g.value_key not in self._effects}.values())
        if len(todo) > 1 and all(todo[0].shares_forward_with(g) for g in todo[1:]):
            rows = occlusion_rows(todo[0].n_players)
            for g, values in zip(todo, shared_values(todo, rows)):
                self._effects[g.value_key] = occlusion_effects(g, values)
        return [self.occlusion_effects(g) for g in games]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}: {int(self.player_mask[n].sum())}/{self.lengths[n]}" for n in self.modality_names)
        return f"ExplainedExample(player tokens {sizes})"


def require_example(example: Any, caller: str) -> ExplainedExample:
    """`example` if it is an `ExplainedExample`; otherwise a TypeError that says how to make one."""
    if isinstance(example, ExplainedExample):
        return example
    raise TypeError(
        f"{caller} takes an ExplainedExample, got {type(example).__name__}: prepare the example once, with "
        "ExplainedExample(model, features, attention_mask, player_mask) or Explainer(model, processor).prepare(...), "
        "and pass that"
    )


# ------------------------------------------------------------------------------------------------ game
class FeatureGame:
    """Value function of one example over coalitions of its tokens.

    Args:
        example: the `ExplainedExample` of ONE example (its model, an `FLI2MoEModel`, interaction mixture or
            dense baseline, is evaluated in eval mode); the game reads its projection and shares the
            reference forwards with the example's other games of the same head. Tokens outside its player
            mask are always present.
        head: `"mixture"`, an expert name or an expert index.
        target: label index (or list of labels, multi-label) whose value is reported; default: the
            head's prediction on the full input (multi-label: the predicted-positive labels, top-1 if none).
        fill: `"mean"` (absent tokens become the modality's dataset-mean token, after projection) or
            `"remove"` (absent tokens are masked out of attention and pooling).
        output: `"logit"` (mean target logit), `"log_odds"` (mean target log-odds, shift-invariant for
            softmax heads) or `"probability"` (mean target probability).
        groups: players made of several tokens. Either `{name: [[positions], ...]}` (token positions
            of that modality; non-player positions are dropped, empty groups skipped) or
            `[[player indices], ...]` indexing the ungrouped players (config modality order, positions
            ascending). Groups must be disjoint and stay inside one modality; uncovered players stay
            single. Players are ordered by modality, then by their first position.
        chunk_size: coalitions per forward pass (memory knob); default: from the free memory.
        autocast_dtype: e.g. `torch.bfloat16` to evaluate under autocast (fast on CPUs with AMX).

    Attributes: `players` (list of (modality, first position)), `player_positions` (list of position
    lists), `n_players`, `modality_of_player` (`(n_players,)` long, config modality index),
    `modality_names`, `target` (labels), `value_full`, `value_empty`, `evaluations` (rows passed to
    the game; the reference values of the full and empty coalitions are not counted), `example` (the
    `ExplainedExample` it reads from; the games of `ExplainedExample.game_for` share one).
    """

    def __init__(
        self,
        example: ExplainedExample,
        head: int | str = "mixture",
        target: int | Sequence[int] | None = None,
        fill: str = "mean",
        output: str = "logit",
        groups: Groups | None = None,
        chunk_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        example = require_example(example, "FeatureGame")
        if fill not in GAME_FILLS:
            raise ValueError(f"fill must be one of {list(GAME_FILLS)} for a game, got {fill!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        model = example.model
        self.model = model
        self.example = example
        self.head = resolve_head(model, head)
        self.fill = fill
        self.output = output
        self.chunk_size = chunk_size
        self.autocast_dtype = autocast_dtype
        self.problem_type = model.config.problem_type
        self.modality_names = list(model.modality_names)
        self.evaluations = 0
        self.lengths = dict(example.lengths)
        self.player_token_mask = example.player_mask
        if chunk_size is None:
            self.chunk_size = memory_chunk_size(model, example.n_tokens, self.head)
        self._build_players(groups)
        if self.n_players == 0:
            raise ValueError(
                "this example has no players: every token is padding or excluded by player_mask; "
                "check attention_mask / player_mask (players are valid, non-special tokens)"
            )
        device = model.device
        self._projected = example.projected  # (1, T, H)
        self._fill = example.mean_tokens  # (H,)
        self._masks = example.masks  # (1, T) bool
        # token -> player column (n_players = the always-present column for non-players)
        self._token_player = {}
        for n in self.modality_names:
            index = torch.full((self._masks[n].shape[1],), self.n_players, dtype=torch.long)
            for p in self._players_of[n]:
                index[self.player_positions[p]] = p
            self._token_player[n] = index.to(device)
        num_labels = model.config.num_labels
        self.target = (
            select_target(self._reference("full")[0], self.problem_type)
            if target is None
            else check_target(target, num_labels)
        )
        logger.debug(
            "FeatureGame: %d players (%s), head %s, target %s",
            self.n_players,
            {n: len(self._players_of[n]) for n in self.modality_names},
            self.head,
            self.target,
        )

    # ------------------------------------------------------------- reference values
    def _reference(self, end: str) -> torch.Tensor:
        """Logits `(1, C)` of the full (`end="full"`) or empty coalition, shared by the example's games of this
        head, fill and autocast (the players' tokens are the example's whatever the grouping)."""
        present = end == "full"
        key = (self.head, self.fill, self.autocast_dtype, end)
        return self.example.reference_logits(
            key,
            lambda: self._logits(torch.full((1, self.n_players), present, dtype=torch.bool, device=self.model.device)),
        )

    @property
    def full_logits(self) -> torch.Tensor:
        """The head's logits `(C,)` (float32, CPU) on the full input."""
        return self._reference("full")[0].float().cpu()

    @property
    def value_full(self) -> float:
        """`v(N)`: the value of the full input (not counted in `evaluations`)."""
        return float(target_values(self._reference("full"), self.target, self.output, self.problem_type)[0])

    @property
    def value_empty(self) -> float:
        """`v(empty)`: the value with every player absent (not counted in `evaluations`)."""
        return float(target_values(self._reference("empty"), self.target, self.output, self.problem_type)[0])

    @property
    def value_key(self) -> tuple:
        """What defines this game's values: games with equal keys on one example give equal values."""
        return (self.head, tuple(self.target), self.output, self.fill, self.chunk_size, self.autocast_dtype,
                tuple(tuple(p) for p in self.player_positions), tuple(self.players))

    # ------------------------------------------------------------------ players
    def _build_players(self, groups: Groups | None) -> None:
        names = self.modality_names
        members = build_players(names, self.player_token_mask, groups)
        self.players: list[tuple[str, int]] = [(n, pos[0]) for n, pos in members]
        self.player_positions: list[list[int]] = [pos for _, pos in members]
        self.n_players = len(members)
        self.modality_of_player = torch.tensor([names.index(n) for n, _ in members], dtype=torch.long)
        self._players_of = {n: [i for i, (m, _) in enumerate(members) if m == n] for n in names}

    def players_of(self, modality: str) -> torch.Tensor:
        """Indices `(n_m,)` of the players of one modality."""
        if modality not in self._players_of:
            raise ValueError(f"unknown modality {modality!r}; this game has {self.modality_names}")
        return torch.tensor(self._players_of[modality], dtype=torch.long)

    def player_scores(self, token_map: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-player scores `(n_players,)` from a token map `{name: (T_m,)}`: the sum over each player's tokens."""
        scores = torch.zeros(self.n_players, dtype=torch.float64)
        for i, ((n, _), positions) in enumerate(zip(self.players, self.player_positions)):
            if n not in token_map:
                raise ValueError(f"the map has no entry for modality {n!r}; expected {self.modality_names}")
            values = torch.as_tensor(token_map[n]).detach().reshape(-1).cpu().double()
            if values.numel() < self.lengths[n]:
                raise ValueError(
                    f"the map of modality {n!r} has {values.numel()} entries, but the example has {self.lengths[n]} tokens"
                )
            scores[i] = values[positions].sum()
        return scores

    def token_map(self, player_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Spread per-player values `(n_players,)` back to tokens `{name: (T_m,)}` (zero at non-players)."""
        values = torch.as_tensor(player_values).detach().reshape(-1).cpu().double()
        if values.numel() != self.n_players:
            raise ValueError(f"expected {self.n_players} player values, got {values.numel()}")
        out = {n: torch.zeros(self.lengths[n], dtype=torch.float64) for n in self.modality_names}
        for i, ((n, _), positions) in enumerate(zip(self.players, self.player_positions)):
            out[n][positions] = values[i]
        return out

    # --------------------------------------------------------------- evaluation
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=self.autocast_dtype)

    def _logits(self, coalitions: torch.Tensor, heads: Sequence[str] | None = None) -> torch.Tensor:
        """Head logits `(k, C)` of a chunk of coalitions `(k, n_players)` bool (on the model's device); with
        `heads` (games sharing a forward pass), `(len(heads), k, C)` of those heads from one pass."""
        k = coalitions.shape[0]
        with torch.inference_mode(), eval_mode(self.model), self._autocast():
            always = torch.ones(k, 1, dtype=torch.bool, device=coalitions.device)
            present_cols = torch.cat([coalitions, always], dim=1)  # (k, n_players + 1)
            present = {n: present_cols[:, self._token_player[n]] for n in self.modality_names}  # (k, T) each
            masks = self._masks
            if self.fill == "remove":  # every row keeps its own tokens; the absent ones are masked out
                masks = {n: self._masks[n] & present[n] for n in self.modality_names}
                present = {n: torch.ones_like(present[n]) for n in self.modality_names}
            head = self.head if heads is None else list(heads)
            return kernels.coalition_logits(self.model, self._projected, self._fill, present, masks, head).float()

    def __call__(self, coalitions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Values `(k,)` (float32, CPU) of coalitions `(k, n_players)` bool; every row is counted."""
        return _chunked_values([self], coalitions)[0]

    def shares_forward_with(self, other: FeatureGame) -> bool:
        """Whether `other` can be evaluated in the same forward pass: the same example, fill, players and
        autocast (the head, target and output may differ)."""
        return (other.example is self.example and self.fill == other.fill
                and self.autocast_dtype == other.autocast_dtype and self.player_positions == other.player_positions)

    def _check_coalitions(self, coalitions: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(coalitions, np.ndarray):
            if coalitions.dtype != np.bool_:
                raise TypeError(
                    f"coalitions must be boolean (True = player present), got numpy dtype {coalitions.dtype}; "
                    "convert with coalitions.astype(bool)"
                )
            coalitions = torch.from_numpy(coalitions)
        if not torch.is_tensor(coalitions) or coalitions.dtype != torch.bool:
            got = coalitions.dtype if torch.is_tensor(coalitions) else type(coalitions).__name__
            raise TypeError(f"coalitions must be a torch.BoolTensor (True = player present), got {got}; use .bool()")
        if coalitions.dim() != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(
                f"coalitions must have shape (k, n_players) = (k, {self.n_players}), got {tuple(coalitions.shape)}; "
                "for one coalition use coalition[None]"
            )
        return coalitions

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}: {len(self._players_of[n])}" for n in self.modality_names)
        return (
            f"FeatureGame(head={self.head!r}, n_players={self.n_players} ({counts}), fill={self.fill!r}, "
            f"output={self.output!r}, target={self.target}, evaluations={self.evaluations})"
        )

    @property
    def grand_coalition(self) -> torch.Tensor:
        return torch.ones(1, self.n_players, dtype=torch.bool)


def shared_values(games: Sequence[FeatureGame], coalitions: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
    """The values `(k,)` of several games on the same coalitions, as `[game(coalitions) for game in games]`: games
    that share a forward pass (`FeatureGame.shares_forward_with`: heads of one example under mean fill) are evaluated
    together, every expert once per chunk instead of once per game. Each game counts the rows."""
    games = list(games)
    if len(games) < 2 or not all(games[0].shares_forward_with(g) for g in games[1:]):
        return [g(coalitions) for g in games]
    return _chunked_values(games, coalitions)


def _chunked_values(games: list[FeatureGame], coalitions: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
    """The values of one game, or of games that share a forward pass, chunk by chunk; each game counts the rows."""
    coalitions = games[0]._check_coalitions(coalitions)
    k, chunk_size = coalitions.shape[0], min(g.chunk_size for g in games)
    out = [torch.empty(k, dtype=torch.float32) for _ in games]
    for start in range(0, k, chunk_size):
        chunk = coalitions[start : start + chunk_size].to(games[0].model.device)
        logits = games[0]._logits(chunk) if len(games) == 1 else games[0]._logits(chunk, [g.head for g in games])
        for g, values, head_logits in zip(games, out, logits[None] if len(games) == 1 else logits):
            values[start : start + chunk.shape[0]] = target_values(head_logits, g.target, g.output, g.problem_type).cpu()
    for g in games:
        g.evaluations += k
    return out
