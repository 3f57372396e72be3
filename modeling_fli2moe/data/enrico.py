"""ENRICO loader (raw public layout): two image modalities (screenshot, wireframe), 20 topics."""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, DatasetDict, Features, Image, Value

from .mmimdb import OnError, VerifyMode, check_on_error, check_root, find_bad_files, handle_bad_files, make_splits

logger = logging.getLogger(__name__)

__all__ = ["ENRICO_TOPICS", "ENRICO_DROPPED_IDS", "load_enrico", "enrico_split_ids"]

#: The 20 design topics of ``design_topics.csv``; label index = position in this sorted tuple.
ENRICO_TOPICS: tuple[str, ...] = (
    "bare", "calculator", "camera", "chat", "editor", "form", "gallery", "list", "login", "maps",
    "mediaplayer", "menu", "modal", "news", "other", "profile", "search", "settings", "terms",
    "tutorial",
)  # fmt: skip

#: Screens whose wireframes are corrupt in the public release; always dropped.
ENRICO_DROPPED_IDS: tuple[str, ...] = ("50105", "50109")

_FIX = (
    "Re-download design_topics.csv (https://github.com/luileito/enrico) and unzip screenshots.zip and "
    "wireframes.zip (http://userinterfaces.aalto.fi/enrico/resources/) into the root folder."
)


def enrico_split_ids(
    screen_ids: Sequence[str], seed: int = 42, fractions: tuple[float, float, float] = (0.65, 0.15, 0.20)
) -> dict[str, list[str]]:
    """Split screen ids (CSV order, known-bad screens already removed) as the reference does:
    shuffle the row indices with ``random.Random(seed)``, then cut at ``int(n * 0.65)`` and
    ``int(n * (0.65 + 0.15))``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    n = len(screen_ids)
    keys = list(range(n))
    random.Random(seed).shuffle(keys)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return {
        "train": [screen_ids[k] for k in keys[:a]],
        "validation": [screen_ids[k] for k in keys[a:b]],
        "test": [screen_ids[k] for k in keys[b:]],
    }


def _read_topics(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"ENRICO topic file not found: {path}. {_FIX}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            if "screen_id" not in header or "topic" not in header:
                raise ValueError(
                    f"ENRICO topic file {path} must have the header 'screen_id,topic' (found {header}). {_FIX}"
                )
            rows = []
            for line_no, row in enumerate(reader, start=2):
                sid, topic = (row.get("screen_id") or "").strip(), (row.get("topic") or "").strip()
                if not sid and not topic:
                    continue  # blank line
                if not sid or not topic:
                    raise ValueError(f"ENRICO topic file {path}, line {line_no}: empty screen_id or topic. {_FIX}")
                rows.append((sid, topic))
    except UnicodeDecodeError as exc:
        raise ValueError(f"ENRICO topic file {path} is not UTF-8 text: {exc}. {_FIX}") from exc
    if not rows:
        raise ValueError(f"ENRICO topic file {path} has no rows. {_FIX}")
    return rows


def load_enrico(
    root: str | os.PathLike,
    *,
    on_error: OnError = "raise",
    verify_images: VerifyMode = "fast",
    split_seed: int = 42,
    split_fractions: tuple[float, float, float] = (0.65, 0.15, 0.20),
    topics: Sequence[str] = ENRICO_TOPICS,
    num_workers: int = 4,
) -> DatasetDict:
    """Load ENRICO from its raw folder as a ``DatasetDict`` (train / validation / test).

    ``root`` holds ``design_topics.csv`` (``screen_id,topic``), ``screenshots/<id>.jpg`` and
    ``wireframes/<id>.png``. Screens 50105 and 50109 (corrupt wireframes in the release) are
    dropped before splitting; the split is the reference one (:func:`enrico_split_ids`:
    ``random.Random(42)`` shuffle of the CSV rows, 65 / 15 / 20 %), so it does not move when
    a file is skipped. Columns: ``id``, ``screenshot`` and ``wireframe`` (``datasets.Image``,
    decoded lazily) and ``label`` (``ClassLabel``, names = ``sorted(topics)``).

    Bad files, our choice for ENRICO (``on_error="raise"``): the release is small and its only
    known bad files are the two dropped screens, so any other missing (``FileNotFoundError``)
    or corrupt (``ValueError``) image means a broken extraction and is raised, naming the
    file; ``on_error="skip"`` drops such screens with ONE warning naming each file and the
    count. A missing root or CSV, a malformed CSV, a duplicated screen id or a topic outside
    ``topics`` always raises. Nothing downloads.
    """
    check_on_error(on_error)
    names = sorted(set(topics))
    if len(names) != len(list(topics)):
        raise ValueError(f"topics contains duplicates: {list(topics)}")
    root = check_root(root, "ENRICO", "the ENRICO folder (with design_topics.csv, screenshots/, wireframes/)",
                      "design_topics.csv")  # fmt: skip
    rows = _read_topics(root / "design_topics.csv")
    topic_of: dict[str, str] = {}
    for sid, topic in rows:
        if sid in topic_of:
            raise ValueError(f"ENRICO topic file {root / 'design_topics.csv'}: screen_id {sid} appears twice. {_FIX}")
        if topic not in names:
            raise ValueError(
                f"ENRICO topic file {root / 'design_topics.csv'}: screen {sid} has unknown topic {topic!r}; "
                f"known topics are {names}. Fix the file, or pass topics=[...] if your copy uses other names."
            )
        topic_of[sid] = topic
    ids = [sid for sid, _ in rows if sid not in ENRICO_DROPPED_IDS]
    dropped = len(rows) - len(ids)
    if dropped:
        logger.info("ENRICO: dropped %d screen(s) with known-corrupt wireframes %s", dropped, ENRICO_DROPPED_IDS)
    split_ids = enrico_split_ids(ids, split_seed, split_fractions)

    files = [p for sid in ids for p in (root / "screenshots" / f"{sid}.jpg", root / "wireframes" / f"{sid}.png")]
    bad = find_bad_files(files, verify_images, num_workers)
    handle_bad_files(bad, "ENRICO", on_error, _FIX)

    index = {t: k for k, t in enumerate(names)}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, sids in split_ids.items():
        out[split] = []
        for sid in sids:
            shot, wire = root / "screenshots" / f"{sid}.jpg", root / "wireframes" / f"{sid}.png"
            if shot in bad or wire in bad:
                continue
            out[split].append(
                {"id": sid, "screenshot": str(shot), "wireframe": str(wire), "label": index[topic_of[sid]]}
            )
    features = Features(
        {"id": Value("string"), "screenshot": Image(), "wireframe": Image(), "label": ClassLabel(names=names)}
    )
    ds = make_splits(out, features)
    logger.info("ENRICO loaded from %s: %s", root, {k: len(v) for k, v in ds.items()})
    return ds
