"""MMHS150K loader (raw public layout): tweet text, image and optional OCR text; hate labels."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from datasets import ClassLabel, DatasetDict, Features, Image, Value

from .mmimdb import (
    OnError,
    VerifyMode,
    check_on_error,
    check_root,
    find_bad_files,
    handle_bad_files,
    make_splits,
    read_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MMHS150K_CLASSES",
    "MMHS150K_BINARY_NAMES",
    "load_mmhs150k",
    "mmhs150k_binary_label",
    "mmhs150k_majority_label",
]

#: The six annotator classes (label value = index).
MMHS150K_CLASSES: tuple[str, ...] = ("NotHate", "Racist", "Sexist", "Homophobe", "Religion", "OtherHate")
#: Names of the binary ``label`` (index 1 = hate).
MMHS150K_BINARY_NAMES: tuple[str, ...] = ("not_hate", "hate")

_FIX = "Re-extract MMHS150K.zip (https://gombru.github.io/2019/10/09/MMHS/) into the root folder."
_SPLIT_FILES = {"train": "train_ids.txt", "validation": "val_ids.txt", "test": "test_ids.txt"}


def _check_labels(labels: Any) -> list[int]:
    if (
        not isinstance(labels, (list, tuple))
        or len(labels) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(MMHS150K_CLASSES) for v in labels)
    ):
        raise ValueError(f"MMHS150K labels must be three annotator labels in 0..5, got {labels!r}")
    return list(labels)


def mmhs150k_binary_label(labels: Sequence[int]) -> int:
    """Binary hate label from the three annotator labels (our choice):
    1 (hate) when at least two of the three labels are non-zero, else 0."""
    return int(sum(v != 0 for v in _check_labels(labels)) >= 2)


def mmhs150k_majority_label(labels: Sequence[int]) -> int:
    """Six-class label: the label given by at least two annotators. With three different
    labels (no majority, our choice): the binary rule decides; NotHate (0) if fewer than two
    are hate, else the smallest non-zero label."""
    labels = _check_labels(labels)
    value, count = Counter(labels).most_common(1)[0]
    if count >= 2:
        return value
    if mmhs150k_binary_label(labels) == 0:
        return 0
    return min(v for v in labels if v != 0)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"MMHS150K split file not found: {path}. {_FIX}")
    with open(path, encoding="utf-8") as fh:
        ids = [line.strip() for line in fh if line.strip()]
    if not ids:
        raise ValueError(f"MMHS150K split file {path} is empty. {_FIX}")
    return ids


def load_mmhs150k(
    root: str | os.PathLike,
    *,
    label_mode: Literal["binary", "majority6"] = "binary",
    on_error: OnError = "skip",
    verify_images: VerifyMode = "fast",
    num_workers: int = 4,
) -> DatasetDict:
    """Load MMHS150K from its extracted folder as a ``DatasetDict`` (train / validation / test).

    ``root`` holds ``MMHS150K_GT.json`` (tweet id -> ``tweet_text``, ``labels`` (three
    annotator labels 0-5), ``img_url``, ...), ``img_resized/<id>.jpg``, optional OCR files
    ``img_txt/<id>.json`` (``img_text``) and ``splits/{train,val,test}_ids.txt``. Columns:
    ``id``, ``text`` (tweet text, raw), ``image`` (``datasets.Image``, decoded lazily),
    ``ocr_text`` ('' when the tweet has no OCR file) and ``label``: binary ``ClassLabel``
    ``['not_hate', 'hate']`` by :func:`mmhs150k_binary_label`, or with
    ``label_mode="majority6"`` the six classes by :func:`mmhs150k_majority_label`.

    Bad files, our choice for MMHS150K (``on_error="skip"``, a large scraped set): a tweet
    whose image is missing or corrupt is dropped and ONE ``UserWarning`` names every skipped
    file and the count; ``on_error="raise"`` raises instead. Always raised: missing root, GT
    file or split file (``FileNotFoundError``); invalid/truncated JSON (GT or OCR), labels
    outside 0..5, a split id absent from the GT file or an id in two splits (``ValueError``).
    Nothing downloads.
    """
    if label_mode not in ("binary", "majority6"):
        raise ValueError(f"label_mode must be 'binary' or 'majority6', got {label_mode!r}")
    check_on_error(on_error)
    root = check_root(root, "MMHS150K", "the extracted MMHS150K folder (with MMHS150K_GT.json, img_resized/, splits/)",
                      "MMHS150K_GT.json")  # fmt: skip
    gt_path = root / "MMHS150K_GT.json"
    gt = read_json(gt_path, "MMHS150K ground-truth file", _FIX)
    if not isinstance(gt, dict):
        raise ValueError(f"MMHS150K ground-truth file {gt_path} must map tweet ids to records. {_FIX}")
    split_ids = {split: _read_ids(root / "splits" / name) for split, name in _SPLIT_FILES.items()}
    seen: dict[str, str] = {}
    for split, ids in split_ids.items():
        for tid in ids:
            if tid not in gt:
                raise ValueError(
                    f"MMHS150K split file {root / 'splits' / _SPLIT_FILES[split]}: tweet id {tid} is not in "
                    f"{gt_path}. {_FIX}"
                )
            if tid in seen:
                raise ValueError(f"MMHS150K: tweet id {tid} is in both the {seen[tid]} and {split} split files. {_FIX}")
            seen[tid] = split

    rule = mmhs150k_binary_label if label_mode == "binary" else mmhs150k_majority_label
    images = [root / "img_resized" / f"{tid}.jpg" for ids in split_ids.values() for tid in ids]
    bad = find_bad_files(images, verify_images, num_workers)
    handle_bad_files(bad, "MMHS150K", on_error, _FIX)

    ocr_dir = root / "img_txt"
    rows: dict[str, list[dict[str, Any]]] = {}
    n_ocr = 0
    for split, ids in split_ids.items():
        rows[split] = []
        for tid in ids:
            image = root / "img_resized" / f"{tid}.jpg"
            if image in bad:
                continue
            rec = gt[tid]
            if not isinstance(rec, dict) or not isinstance(rec.get("tweet_text"), str):
                raise ValueError(f"MMHS150K: record {tid} in {gt_path} has no 'tweet_text' string. {_FIX}")
            try:
                label = rule(rec.get("labels"))
            except ValueError as exc:
                raise ValueError(f"MMHS150K: record {tid} in {gt_path}: {exc}. {_FIX}") from None
            ocr_text = ""
            ocr_path = ocr_dir / f"{tid}.json"
            if ocr_path.is_file():
                ocr = read_json(ocr_path, "MMHS150K OCR file", _FIX)
                if isinstance(ocr, dict) and isinstance(ocr.get("img_text"), str):
                    ocr_text = ocr["img_text"]
                    n_ocr += 1
                else:
                    raise ValueError(f"MMHS150K OCR file {ocr_path} has no 'img_text' string. {_FIX}")
            rows[split].append(
                {"id": tid, "text": rec["tweet_text"], "image": str(image), "ocr_text": ocr_text, "label": label}
            )
    names = list(MMHS150K_BINARY_NAMES if label_mode == "binary" else MMHS150K_CLASSES)
    features = Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "image": Image(),
            "ocr_text": Value("string"),
            "label": ClassLabel(names=names),
        }
    )
    ds = make_splits(rows, features)
    logger.info("MMHS150K loaded from %s: %s (%d with OCR text)", root, {k: len(v) for k, v in ds.items()}, n_ocr)
    return ds
