"""The players of one example: which tokens may be players, and how tokens are grouped into players.

Players are the valid, non-special tokens of every modality: the attention mask AND the processor's player
mask (0 for special tokens such as [CLS]/[SEP]). Tokens can be grouped into one player: a word's
word-pieces (`word_groups`), a cell of image patches (`patch_cell_groups`), or any disjoint groups inside one
modality (`build_players`). Tokens without display text are named by `default_token_names`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .results import grid_shape

__all__ = [
    "Groups",
    "build_players",
    "default_token_names",
    "patch_cell_groups",
    "resolve_player_mask",
    "word_groups",
]

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


def default_token_names(name: str, n_tokens: int) -> list[str]:
    """Display names of tokens that have no text: `"image 2,3"` (row, column) on a square grid, else `"audio 5"`."""
    rows, cols = grid_shape(n_tokens)
    return [f"{name} {i // cols},{i % cols}" if rows > 1 else f"{name} {i}" for i in range(n_tokens)]


def build_players(
    names: Sequence[str], player_mask: Mapping[str, torch.Tensor], groups: Groups | None
) -> list[tuple[str, list[int]]]:
    """The players `(modality, token positions)` of one example, ordered by modality (in `names` order), then
    by their first position.

    `player_mask[name]` `(T_m,)` bool marks the tokens that may be players. `groups` (see `FeatureGame`):
    `{name: [[positions], ...]}` (non-player positions are dropped, empty groups skipped) or
    `[[player indices], ...]` indexing the ungrouped players; groups must be disjoint and stay inside one
    modality, and uncovered players stay single."""
    names = list(names)
    base = [(n, int(p)) for n in names for p in player_mask[n].nonzero().flatten().tolist()]
    members: list[tuple[str, list[int]]] = []
    covered: set[tuple[str, int]] = set()
    if groups is None:
        pass
    elif isinstance(groups, Mapping):
        unknown = [k for k in groups if k not in names]
        if unknown:
            raise ValueError(f"groups has unknown modality {unknown[0]!r}: expected some of {names}")
        for n, lists in groups.items():
            is_player = player_mask[n]
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
    return members
