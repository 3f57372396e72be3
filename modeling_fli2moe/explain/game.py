"""The feature-level game of one example: a value function over boolean coalitions of tokens.

Players are the valid, non-special tokens of every modality (optionally grouped: word-pieces into
words, patches into cells). A coalition is a boolean mask over players; an absent player's projected
token is replaced by its modality's dataset-mean token (``fill="mean"``) or removed from attention and
pooling (``fill="remove"``). The value is the target logit (or probability) of one head. The example is
projected once; every chunk of coalitions is built with one ``torch.where`` in the projected space and
evaluated in one batched forward under ``torch.inference_mode``.

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
from ..random_state import RandomState, check_random_state
from ._utils import check_target, eval_mode, resolve_head, select_target, target_values
from .example import ExplainedExample, Groups, resolve_player_mask, word_groups

logger = logging.getLogger(__name__)

# check_random_state, check_target, eval_mode, resolve_head, select_target and target_values live in
# random_state.py and _utils.py, resolve_player_mask and word_groups in example.py; they stay importable here
__all__ = [
    "FILLS",
    "OUTPUTS",
    "ExplainedExample",
    "FeatureGame",
    "RandomState",
    "check_random_state",
    "check_target",
    "eval_mode",
    "patch_cell_groups",
    "resolve_head",
    "resolve_player_mask",
    "select_target",
    "target_values",
    "word_groups",
]

FILLS = ("mean", "remove")
OUTPUTS = ("log_odds", "logit", "probability")

def patch_cell_groups(
    grid: tuple[int, int], cell: tuple[int, int] = (2, 2), offset: int = 0
) -> list[list[int]]:
    """Token positions of a row-major `grid` (rows, cols) of patches grouped into `cell`-sized blocks
    (edge blocks are smaller when the grid does not divide). `offset` shifts every position (e.g. 1
    when a CLS token comes first). Use as `groups={"image": patch_cell_groups((7, 7))}`."""
    rows, cols = (int(v) for v in grid)
    cr, cc = (int(v) for v in cell)
    if min(rows, cols, cr, cc) < 1:
        raise ValueError(f"grid and cell must be positive (rows, cols) pairs, got grid={grid}, cell={cell}")
    groups = []
    for r0 in range(0, rows, cr):
        for c0 in range(0, cols, cc):
            groups.append(
                [offset + r * cols + c for r in range(r0, min(r0 + cr, rows)) for c in range(c0, min(c0 + cc, cols))]
            )
    return groups


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


# ------------------------------------------------------------------------------------------------ game
class FeatureGame:
    """Value function of one example over coalitions of its tokens.

    Args:
        model: an `FLI2MoEModel` (interaction mixture or dense baseline); evaluated in eval mode.
        features: `{name: (1, T_m, D_m)}` frozen-encoder features of ONE example, or an `ExplainedExample`
            of it (then no masks here: the game reads the example's projection and shares the reference
            forwards with the example's other games of the same head).
        attention_mask: `{name: (1, T_m)}`, 1 = real token (omitted = all valid).
        player_mask: `{name: (T_m,) or (1, T_m)}`, 1 = may be a player (use 0 for special tokens such as
            [CLS]/[SEP]); intersected with the attention mask. Non-players are always present.
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
        model: Any,
        features: Mapping[str, torch.Tensor] | ExplainedExample,
        attention_mask: Mapping[str, torch.Tensor] | None = None,
        player_mask: Mapping[str, torch.Tensor] | None = None,
        head: int | str = "mixture",
        target: int | Sequence[int] | None = None,
        fill: str = "mean",
        output: str = "logit",
        groups: Groups | None = None,
        chunk_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {list(FILLS)}, got {fill!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if isinstance(features, ExplainedExample):
            if attention_mask is not None or player_mask is not None:
                raise ValueError("an ExplainedExample carries its own masks; pass attention_mask / player_mask to it")
            if features.model is not model:
                raise ValueError("this ExplainedExample was prepared for another model")
            example = features
        else:
            example = ExplainedExample(model, features, attention_mask, player_mask)
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
    def _build_players(self, groups: Any) -> None:
        names = self.modality_names
        base = [(n, int(p)) for n in names for p in self.player_token_mask[n].nonzero().flatten().tolist()]
        members: list[tuple[str, list[int]]] = []
        covered: set[tuple[str, int]] = set()
        if groups is None:
            pass
        elif isinstance(groups, Mapping):
            unknown = [k for k in groups if k not in names]
            if unknown:
                raise ValueError(f"groups has unknown modality {unknown[0]!r}: expected some of {names}")
            for n, lists in groups.items():
                is_player = self.player_token_mask[n]
                for g in lists:
                    positions = sorted({int(p) for p in g if 0 <= int(p) < is_player.numel() and bool(is_player[int(p)])})
                    if positions:
                        members.append((n, positions))
        else:
            for g in groups:
                idx = [int(i) for i in g]
                if not idx:
                    raise ValueError("groups contains an empty group; every group needs at least one player index")
                bad = [i for i in idx if not 0 <= i < len(base)]
                if bad:
                    raise ValueError(
                        f"groups refers to player index {bad[0]}, but this example has {len(base)} ungrouped players "
                        "(valid, non-special tokens of all modalities, in config order)"
                    )
                mods = {base[i][0] for i in idx}
                if len(mods) > 1:
                    raise ValueError(f"group {idx} mixes modalities {sorted(mods)}; a group must stay inside one modality")
                members.append((base[idx[0]][0], sorted({base[i][1] for i in idx})))
        for n, positions in members:
            for p in positions:
                if (n, p) in covered:
                    raise ValueError(f"groups overlap: token {p} of modality {n!r} is in two groups; groups must be disjoint")
                covered.add((n, p))
        members += [(n, [p]) for n, p in base if (n, p) not in covered]
        members.sort(key=lambda m: (names.index(m[0]), m[1][0]))
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

    def _logits(self, coalitions: torch.Tensor) -> torch.Tensor:
        """Head logits `(k, C)` of a chunk of coalitions `(k, n_players)` bool (on the model's device)."""
        k = coalitions.shape[0]
        with torch.inference_mode(), eval_mode(self.model), self._autocast():
            always = torch.ones(k, 1, dtype=torch.bool, device=coalitions.device)
            present_cols = torch.cat([coalitions, always], dim=1)  # (k, n_players + 1)
            present = {n: present_cols[:, self._token_player[n]] for n in self.modality_names}  # (k, T) each
            if self.fill == "mean":
                return kernels.coalition_logits(self.model, self._projected, self._fill, present, self._masks, self.head).float()
            projected, masks = {}, {}
            for n in self.modality_names:
                base_mask = self._masks[n].expand(k, -1)
                if self.fill == "mean":
                    projected[n] = torch.where(present[n].unsqueeze(-1), self._projected[n], self._fill[n])
                    masks[n] = base_mask
                else:
                    projected[n] = self._projected[n].expand(k, -1, -1)
                    masks[n] = base_mask & present[n]
            return self.model.head_logits_from_projected(projected, masks, self.head).float()

    def __call__(self, coalitions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Values `(k,)` (float32, CPU) of coalitions `(k, n_players)` bool; every row is counted."""
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
        k = coalitions.shape[0]
        out = torch.empty(k, dtype=torch.float32)
        device = self.model.device
        for start in range(0, k, self.chunk_size):
            chunk = coalitions[start : start + self.chunk_size].to(device)
            logits = self._logits(chunk)
            out[start : start + chunk.shape[0]] = target_values(logits, self.target, self.output, self.problem_type).cpu()
        self.evaluations += k
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}: {len(self._players_of[n])}" for n in self.modality_names)
        return (
            f"FeatureGame(head={self.head!r}, n_players={self.n_players} ({counts}), fill={self.fill!r}, "
            f"output={self.output!r}, target={self.target}, evaluations={self.evaluations})"
        )

    @property
    def grand_coalition(self) -> torch.Tensor:
        return torch.ones(1, self.n_players, dtype=torch.bool)

