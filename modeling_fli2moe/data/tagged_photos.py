"""The tagged-photos benchmark: photo collages and tweet-like captions, written in the MMHS150K raw layout.

A second benchmark beside the planted one, with richer images and many-valued cues. Every image is a
224 x 224 crop of a background photograph with three photo patches pasted into grid cells (one 32 x 32
cell each, non-touching): the *subject* patch and two distractors. Every caption names one subject word
among filler phrases ("just saw the old gravel near a quiet road by the market"). Photographs and
textures are scikit-image's sample images (they ship inside its wheel). Both cues are present in every
example; they take many values, and the label is a function of the two:

=============  ==========================================  =========================================
kind           cues (word, subject patch)                  label
=============  ==========================================  =========================================
synergy        a word among 5 (brick, grass, gravel,       1 if the word names the patch, 0 if it
               coffee, cat) and a patch among the same     names another one: neither cue alone
               5 photos                                    tells (each value is 1 in half the cases)
redundancy     a word among 6 (astronaut, rocket,          the subject's group (astronaut, coins,
               motorcycle, eye, galaxy, coins) and the     motorcycle: 1; rocket, eye, galaxy: 0):
               patch of the same subject                   either cue alone suffices
=============  ==========================================  =========================================

The two kinds use disjoint words and photos, so the rule that applies is readable from either cue.
Every caption has the same number of phrases whatever its cues, one subject word each; every image has
three patches. Distractor patches and backgrounds come from photographs no cue uses.

Storage is the MMHS150K layout, read by :func:`~modeling_fli2moe.data.load_mmhs150k`:
``MMHS150K_GT.json`` (tweet id -> ``tweet_text``, three annotator ``labels``: all three non-zero for
label 1, all zero for label 0), ``img_resized/<id>.jpg`` and ``splits/{train,val,test}_ids.txt``. The
ground truth (kind, subject word and its token positions, subject patch box and grid cell) is in
``tagged_photos_truth.json`` beside it, which the loader does not read; :func:`load_tagged_photos` joins it
to the loaded splits by id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict
from PIL import Image as PILImage

from ..random_state import check_random_state
from .mmhs150k import load_mmhs150k
from .planted import PLANTED_GRID_SIZE, _cell_bounds, _default_tokenizer, _pick_cells, text_positions_for

logger = logging.getLogger(__name__)

__all__ = [
    "TAGGED_PHOTO_KINDS",
    "SYNERGY_SUBJECTS",
    "REDUNDANCY_SUBJECTS",
    "make_tagged_photos",
    "load_tagged_photos",
    "tagged_photos_label",
]

TAGGED_PHOTO_KINDS: tuple[str, ...] = ("synergy", "redundancy")
#: Synergy subjects: word -> scikit-image sample image.
SYNERGY_SUBJECTS: dict[str, str] = {
    "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "coffee": "coffee.png", "cat": "chelsea.png",
}  # fmt: skip
#: Redundancy subjects: word -> (scikit-image sample image, label).
REDUNDANCY_SUBJECTS: dict[str, tuple[str, int]] = {
    "astronaut": ("astronaut.png", 1), "coins": ("coins.png", 1), "motorcycle": ("motorcycle_left.png", 1),
    "rocket": ("rocket.jpg", 0), "eye": ("retina.jpg", 0), "galaxy": ("hubble_deep_field.jpg", 0),
}  # fmt: skip
#: Photographs for backgrounds and distractor patches; no cue uses them.
_SCENERY = ("camera.png", "moon.png", "page.png", "text.png", "cell.png", "ihc.png", "clock_motion.png", "color.png")
_OPENERS = ("just saw", "look at", "cannot believe", "so much love for", "thinking about")
_DETERMINERS = ("the", "a", "this", "that")
_ADJECTIVES = ("old", "quiet", "small", "big", "strange", "lovely", "dark", "bright", "new", "tiny")
_NOUNS = ("road", "market", "house", "garden", "window", "table", "street", "room", "park", "shop", "corner",
          "bench", "station", "bridge", "river", "wall")  # fmt: skip
_PREPOSITIONS = ("near", "by", "behind", "beside", "under", "at")
N_PHRASES = 3
N_PATCHES = 3
_IMAGE_SIZE = 224
_GT_FILE, _TRUTH_FILE = "MMHS150K_GT.json", "tagged_photos_truth.json"
_SPLIT_FILES = {"train": "train_ids.txt", "validation": "val_ids.txt", "test": "test_ids.txt"}


def tagged_photos_label(kind: str, word: str, subject: str) -> int:
    """The labelling rule: synergy is 1 when the word names the subject patch; redundancy is the subject's
    group (word and patch always name the same subject)."""
    if kind == "synergy":
        return int(word == subject)
    if kind == "redundancy":
        if word != subject:
            raise ValueError(f"redundancy examples name their subject in both cues, got {word!r} and {subject!r}")
        return REDUNDANCY_SUBJECTS[subject][1]
    raise ValueError(f"unknown kind {kind!r}; expected one of {TAGGED_PHOTO_KINDS}")


def _photo(name: str) -> PILImage.Image:
    try:
        folder = resources.files("skimage") / "data"
    except ModuleNotFoundError:
        raise ImportError(
            "the tagged-photos benchmark draws scikit-image's sample photographs: pip install scikit-image"
        ) from None
    with resources.as_file(folder / name) as path:
        return PILImage.open(path).convert("RGB")


def _crop(photo: PILImage.Image, size: int, scale: tuple[float, float], rng: np.random.Generator) -> PILImage.Image:
    """A random square crop (``scale`` of the short side), flipped half the time, brightness jittered."""
    w, h = photo.size
    side = max(8, int(min(w, h) * rng.uniform(*scale)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = photo.crop((x, y, x + side, y + side)).resize((size, size), PILImage.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(PILImage.FLIP_LEFT_RIGHT)
    arr = np.asarray(out, dtype=np.float32) * rng.uniform(0.85, 1.15)
    return PILImage.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def _caption(word: str, rng: np.random.Generator) -> tuple[str, list[int]]:
    """``opener`` + three ``determiner adjective noun`` phrases joined by prepositions; one phrase's noun
    is the subject word. Returns the text and the word's character span."""
    at = int(rng.integers(N_PHRASES))
    text, span = str(rng.choice(_OPENERS)), [0, 0]
    for k in range(N_PHRASES):
        if k:
            text += f" {rng.choice(_PREPOSITIONS)}"
        text += f" {rng.choice(_DETERMINERS)} {rng.choice(_ADJECTIVES)} "
        if k == at:
            span = [len(text), len(text) + len(word)]
            text += word
        else:
            text += str(rng.choice(_NOUNS))
    return text, span


def _example(kind: str, word: str, subject: str, photos: dict[str, PILImage.Image], rng: np.random.Generator) -> dict:
    text, span = _caption(word, rng)
    image = _crop(photos[str(rng.choice(_SCENERY))], _IMAGE_SIZE, (0.6, 1.0), rng)
    cells = _pick_cells(N_PATCHES, PLANTED_GRID_SIZE, rng)
    sources = [SYNERGY_SUBJECTS.get(subject) or REDUNDANCY_SUBJECTS[subject][0]]
    sources += [str(s) for s in rng.choice(_SCENERY, size=N_PATCHES - 1, replace=False)]
    box: list[int] = []
    for k, (cell, source) in enumerate(zip(cells, sources)):
        x0, y0, x1, y1 = _cell_bounds(int(cell), _IMAGE_SIZE, PLANTED_GRID_SIZE)
        image.paste(_crop(photos[source], x1 - x0, (0.4, 0.9), rng), (x0, y0))
        if k == 0:
            box = [x0, y0, x1, y1]
    return {"text": text, "image": image, "label": tagged_photos_label(kind, word, subject), "kind": kind,
            "word": word, "subject": subject, "text_span": span, "image_box": box, "image_regions": [int(cells[0])]}


def _cues(kind: str, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` (word, subject) pairs: synergy half matching, half naming another subject, every word and every
    subject equally often in both labels; redundancy every subject equally often."""
    if kind == "redundancy":
        subjects = list(REDUNDANCY_SUBJECTS)
        return [(subjects[k % len(subjects)],) * 2 for k in rng.permutation(n)]
    subjects = list(SYNERGY_SUBJECTS)
    out = []
    for k in rng.permutation(n):
        subject = subjects[(k // 2) % len(subjects)]
        if k % 2:  # a mismatch: the word names one of the other subjects
            others = [s for s in subjects if s != subject]
            out.append((others[int(rng.integers(len(others)))], subject))
        else:
            out.append((subject, subject))
    return out


def make_tagged_photos(
    root: str | os.PathLike,
    n_per_kind: int = 300,
    *,
    random_state: int | np.random.Generator = 0,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    overwrite: bool = False,
) -> Path:
    """Write the tagged-photos benchmark into ``root`` in the MMHS150K raw layout, plus its ground truth.

    ``n_per_kind`` examples of each kind, split by ``split_fractions``; the same ``random_state`` gives the
    same files. A folder that already holds files is refused unless ``overwrite``. Returns ``root``."""
    if not isinstance(n_per_kind, (int, np.integer)) or n_per_kind < 10:
        raise ValueError(f"n_per_kind must be an int >= 10, got {n_per_kind!r}")
    if len(split_fractions) != 3 or min(split_fractions) <= 0 or abs(sum(split_fractions) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be three positive numbers summing to 1, got {split_fractions}")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; pick an empty folder or pass overwrite=True to replace it")
    rng = check_random_state(random_state)
    photos = {name: _photo(name) for name in
              (*SYNERGY_SUBJECTS.values(), *(s for s, _ in REDUNDANCY_SUBJECTS.values()), *_SCENERY)}
    (root / "img_resized").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(exist_ok=True)
    n_train = int(round(n_per_kind * split_fractions[0]))
    n_val = int(round(n_per_kind * split_fractions[1]))
    counts = {"train": n_train, "validation": n_val, "test": n_per_kind - n_train - n_val}
    gt: dict[str, dict[str, Any]] = {}
    truth: dict[str, dict[str, Any]] = {}
    tokenizer = _default_tokenizer()
    for split, n in counts.items():
        rows = [_example(kind, word, subject, photos, rng)
                for kind in TAGGED_PHOTO_KINDS for word, subject in _cues(kind, n, rng)]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        positions = text_positions_for([r["text"] for r in rows], [[r["text_span"]] for r in rows], tokenizer)
        ids = []
        for row, pos in zip(rows, positions):
            tid = str(int(rng.integers(10**18, 10**19 - 1, dtype=np.uint64)))
            ids.append(tid)
            row["image"].save(root / "img_resized" / f"{tid}.jpg", quality=92)
            gt[tid] = {"tweet_text": row["text"], "labels": [row["label"] * int(c) for c in rng.integers(1, 6, 3)],
                       "img_url": f"http://pbs.twimg.com/media/{tid}.jpg", "tweet_url": f"https://twitter.com/i/{tid}"}
            truth[tid] = {"split": split, "text_positions": pos,
                          **{k: row[k] for k in ("kind", "word", "subject", "text_span", "image_box", "image_regions")}}
        (root / "splits" / _SPLIT_FILES[split]).write_text("\n".join(ids) + "\n")
    (root / _GT_FILE).write_text(json.dumps(gt))
    (root / _TRUTH_FILE).write_text(json.dumps({"generator": __name__, "n_per_kind": int(n_per_kind),
                                                "random_state": random_state if isinstance(random_state, int) else None,
                                                "examples": truth}))
    logger.info("tagged-photos benchmark written to %s: %s per kind", root, counts)
    return root


def load_tagged_photos(root: str | os.PathLike, **loader_options: Any) -> DatasetDict:
    """Read the benchmark with the MMHS150K loader and join its ground truth by id (columns ``kind``,
    ``word``, ``subject``, ``text_positions``, ``text_span``, ``image_box``, ``image_regions``)."""
    root = Path(root)
    truth_path = root / _TRUTH_FILE
    if not truth_path.is_file():
        raise FileNotFoundError(f"no {_TRUTH_FILE} in {root}: write the benchmark with make_tagged_photos(root)")
    truth = json.loads(truth_path.read_text())["examples"]
    ds = load_mmhs150k(root, **loader_options)
    keys = ("kind", "word", "subject", "text_positions", "text_span", "image_box", "image_regions")

    def join(batch: dict[str, list]) -> dict[str, list]:
        return {k: [truth[i][k] for i in batch["id"]] for k in keys}

    return ds.map(join, batched=True, desc="ground truth")

