"""Dataset loaders (raw public layouts, nothing downloads) and the two interaction benchmarks.

``LOADERS`` maps a config's loader name to its function, each returning a ``DatasetDict``
with ``train``, ``validation`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable

from datasets import DatasetDict

from .enrico import ENRICO_DROPPED_IDS, ENRICO_TOPICS, enrico_split_ids, load_enrico
from .mmhs150k import (
    MMHS150K_BINARY_NAMES,
    MMHS150K_CLASSES,
    load_mmhs150k,
    mmhs150k_binary_label,
    mmhs150k_majority_label,
)
from .mmimdb import MMIMDB_GENRES, check_image, load_mmimdb
from .planted import (
    EVIDENCE_OBJECTS,
    EVIDENCE_WORDS,
    PLANTED_GRID_SIZE,
    PLANTED_KINDS,
    PLANTED_LABEL_NAMES,
    box_to_regions,
    is_planted_pair,
    load_planted,
    make_planted,
    planted_config,
    planted_label,
    region_near,
    save_planted,
)
from .tagged_photos import (
    TAGGED_PHOTO_KINDS,
    load_tagged_photos,
    make_tagged_photos,
    tagged_photos_label,
)

#: Loader registry: ``LOADERS[name](root, **options) -> DatasetDict``. ``"planted"`` takes a
#: folder written by :func:`save_planted`, or ``None`` to generate in memory.
LOADERS: dict[str, Callable[..., DatasetDict]] = {
    "mmimdb": load_mmimdb,
    "enrico": load_enrico,
    "mmhs150k": load_mmhs150k,
    "planted": load_planted,
}

#: Label names of the loaders whose multi-hot ``labels`` column cannot carry them (``ClassLabel`` columns do).
LABEL_NAMES: dict[str, tuple[str, ...]] = {"mmimdb": MMIMDB_GENRES}


def get_loader(name: str) -> Callable[..., DatasetDict]:
    """The loader registered under ``name``; an unknown name raises, listing the known ones."""
    try:
        return LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset loader {name!r}; known loaders: {sorted(LOADERS)}") from None


__all__ = [
    "LOADERS",
    "LABEL_NAMES",
    "get_loader",
    "MMIMDB_GENRES",
    "load_mmimdb",
    "ENRICO_TOPICS",
    "ENRICO_DROPPED_IDS",
    "enrico_split_ids",
    "load_enrico",
    "MMHS150K_CLASSES",
    "MMHS150K_BINARY_NAMES",
    "load_mmhs150k",
    "mmhs150k_binary_label",
    "mmhs150k_majority_label",
    "PLANTED_KINDS",
    "PLANTED_LABEL_NAMES",
    "PLANTED_GRID_SIZE",
    "EVIDENCE_WORDS",
    "EVIDENCE_OBJECTS",
    "make_planted",
    "save_planted",
    "load_planted",
    "planted_config",
    "planted_label",
    "box_to_regions",
    "region_near",
    "is_planted_pair",
    "TAGGED_PHOTO_KINDS",
    "make_tagged_photos",
    "load_tagged_photos",
    "tagged_photos_label",
    "check_image",
]
