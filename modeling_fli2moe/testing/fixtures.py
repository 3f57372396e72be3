"""Tiny raw-layout replicas of MM-IMDb, ENRICO and MMHS150K, for tests and examples.

Each ``write_*_fixture(directory, ...)`` writes the dataset's public folder layout (same file
names, JSON field names and shapes) with a handful of small PIL-made images into
``directory`` and returns a :class:`DatasetFixture` describing what it wrote, including the
deliberately broken files. The defaults are chosen so that each loader's *default* call
succeeds on the default fixture: MM-IMDb and MMHS150K (loaders skip bad files) get one
corrupt and one missing image; ENRICO (loader raises on bad files) gets only the release's
own known-bad wireframes of screens 50105 and 50109, which the loader drops by id.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.enrico import ENRICO_DROPPED_IDS, ENRICO_TOPICS, enrico_split_ids
from ..data.mmhs150k import MMHS150K_CLASSES
from ..data.mmimdb import MMIMDB_GENRES
from ..random_state import check_random_state

__all__ = ["DatasetFixture", "write_mmimdb_fixture", "write_enrico_fixture", "write_mmhs150k_fixture"]

_WORDS = (
    "a young detective returns to her home town where an old friend has vanished and the river "
    "keeps its secrets while a family tries to rebuild their life after the war in a small city"
).split()


@dataclass
class DatasetFixture(os.PathLike):
    """What a fixture writer wrote. Usable as a path (``load_mmimdb(fixture)``).

    ``splits``: ids per split (``train`` / ``validation`` / ``test``) as listed in the raw
    split files; ``kept``: the ids a loader keeps when it skips bad files; ``bad``: each
    broken file and why (``"corrupt"`` or ``"missing"``); ``records``: the raw metadata
    written per id (JSON record or CSV topic).
    """

    root: Path
    splits: dict[str, list[str]]
    kept: dict[str, list[str]]
    bad: dict[Path, str] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.root)


def _unique_ints(rng: np.random.Generator, high: int, n: int) -> list[int]:
    """``n`` distinct ints in ``[0, high)``, in draw order."""
    out: dict[int, None] = {}
    while len(out) < n:
        out[int(rng.integers(0, high))] = None
    return list(out)


def _image(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A small image: flat colour with a random rectangle, so it compresses and decodes fast."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = rng.integers(0, 256, size=3, dtype=np.uint8)
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    arr[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, quality=90) if fmt == "JPEG" else img.save(path, format=fmt)


def _truncate(path: Path) -> None:
    """Cut an image file in half: PIL still opens the header, decoding fails (a realistic
    broken download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n")


def _sentence(rng: np.random.Generator, n: int) -> str:
    words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=n)]
    return " ".join(words).capitalize() + "."


def _split3(ids: list[str], fractions: tuple[float, float]) -> dict[str, list[str]]:
    a = max(1, int(len(ids) * fractions[0]))
    b = max(a + 1, a + int(len(ids) * fractions[1]))
    return {"train": ids[:a], "validation": ids[a:b], "test": ids[b:]}


def _described(
    root: Path,
    splits: dict[str, list[str]],
    records: dict[str, Any],
    corrupt: Path | None,
    missing: Path | None,
    spoil: Callable[[Path], None] = _garbage,
) -> DatasetFixture:
    """Spoil the file `corrupt` and delete `missing` (either may be None), and describe the fixture:
    the ids a skipping loader keeps are those of neither file."""
    bad: dict[Path, str] = {}
    if corrupt is not None:
        spoil(corrupt)
        bad[corrupt] = "corrupt"
    if missing is not None:
        missing.unlink()
        bad[missing] = "missing"
    bad_ids = {p.stem for p in bad}
    kept = {s: [i for i in ids if i not in bad_ids] for s, ids in splits.items()}
    return DatasetFixture(root, splits, kept, bad, records)


def write_mmimdb_fixture(
    directory: str | os.PathLike,
    n: int = 12,
    *,
    corrupt: bool = True,
    missing: bool = True,
    random_state: int | np.random.Generator = 0,
) -> DatasetFixture:
    """Write ``directory/mmimdb/`` with ``split.json`` (``train``/``dev``/``test``) and
    ``dataset/<id>.json`` + ``<id>.jpeg`` for ``n`` movies (7-digit IMDb ids). Each JSON has
    the IMDbPY-style fields of the release (``title``, ``year``, ``kind``, ``genres``,
    ``plot`` (list of strings), ``plot outline``, ``rating``, ``votes``, ``runtimes``,
    ``languages``, ``countries``, ``director``/``cast`` (lists of ``{"name", "person_id"}``),
    ``cover url``). Some movies carry genres outside the 23 (e.g. ``Reality-TV``).
    ``corrupt``: the first train poster is truncated; ``missing``: the first dev poster is
    not written."""
    if n < 6:
        raise ValueError(f"n must be at least 6 (two ids per split), got {n}")
    rng = check_random_state(random_state)
    root = Path(directory) / "mmimdb"
    data = root / "dataset"
    data.mkdir(parents=True, exist_ok=True)
    ids = [f"{10_000 + v:07d}" for v in _unique_ints(rng, 3_000_000, n)]
    splits = _split3(ids, (0.6, 0.2))
    records = {}
    for k, i in enumerate(ids):
        genres = [MMIMDB_GENRES[g] for g in rng.choice(len(MMIMDB_GENRES), size=int(rng.integers(1, 4)), replace=False)]
        if k % 5 == 4:
            genres.append("Reality-TV" if k % 2 else "News")
        plots = [_sentence(rng, int(rng.integers(12, 30))) for _ in range(int(rng.integers(1, 4)))]
        rec = {
            "title": _sentence(rng, 3).rstrip("."),
            "year": int(rng.integers(1920, 2016)),
            "kind": "movie",
            "genres": genres,
            "plot": plots,
            "plot outline": plots[0],
            "rating": round(float(rng.uniform(1, 10)), 1),
            "votes": int(rng.integers(5, 200_000)),
            "runtimes": [str(int(rng.integers(60, 180)))],
            "languages": ["English"],
            "countries": ["USA"],
            "director": [{"name": "Jane Doe", "person_id": f"{int(rng.integers(1, 9_999_999)):07d}"}],
            "cast": [{"name": "John Roe", "person_id": f"{int(rng.integers(1, 9_999_999)):07d}"}],
            "cover url": f"https://images-na.ssl-images-amazon.com/images/M/{i}.jpg",
        }
        records[i] = rec
        (data / f"{i}.json").write_text(json.dumps(rec))
        _save(_image(rng, (20, 30)), data / f"{i}.jpeg", "JPEG")
    (root / "split.json").write_text(
        json.dumps({"train": splits["train"], "dev": splits["validation"], "test": splits["test"]})
    )
    return _described(root, splits, records,
                      corrupt=data / f"{splits['train'][0]}.jpeg" if corrupt else None,
                      missing=data / f"{splits['validation'][0]}.jpeg" if missing else None,
                      spoil=_truncate)


def write_enrico_fixture(
    directory: str | os.PathLike,
    n: int = 24,
    *,
    corrupt: bool = False,
    missing: bool = False,
    random_state: int | np.random.Generator = 0,
) -> DatasetFixture:
    """Write ``directory/enrico/`` with ``design_topics.csv`` (``screen_id,topic``),
    ``screenshots/<id>.jpg`` and ``wireframes/<id>.png`` for ``n`` screens, always including
    screens 50105 and 50109 with corrupt wireframes (as in the release). Topics cycle through
    the 20 topics. ``corrupt``: one more screenshot is garbage; ``missing``: one more
    wireframe is not written (the default loader raises on either)."""
    if n < 8:
        raise ValueError(f"n must be at least 8, got {n}")
    rng = check_random_state(random_state)
    root = Path(directory) / "enrico"
    root.mkdir(parents=True, exist_ok=True)
    others = [str(10_000 + v) for v in _unique_ints(rng, 62_000, n + 2) if str(10_000 + v) not in ENRICO_DROPPED_IDS]
    ids = others[: n - 2]
    ids[3:3] = [ENRICO_DROPPED_IDS[0]]
    ids[9:9] = [ENRICO_DROPPED_IDS[1]]
    topics = {sid: ENRICO_TOPICS[(k * 7) % len(ENRICO_TOPICS)] for k, sid in enumerate(ids)}
    with open(root / "design_topics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["screen_id", "topic"])
        for sid in ids:
            writer.writerow([sid, topics[sid]])
    for sid in ids:
        _save(_image(rng, (18, 32)), root / "screenshots" / f"{sid}.jpg", "JPEG")
        _save(_image(rng, (18, 32)), root / "wireframes" / f"{sid}.png", "PNG")
    for sid in ENRICO_DROPPED_IDS:
        _garbage(root / "wireframes" / f"{sid}.png")
    kept_ids = [sid for sid in ids if sid not in ENRICO_DROPPED_IDS]
    splits = enrico_split_ids(kept_ids)
    return _described(root, splits, topics,
                      corrupt=root / "screenshots" / f"{splits['train'][0]}.jpg" if corrupt else None,
                      missing=root / "wireframes" / f"{splits['test'][0]}.png" if missing else None)


def write_mmhs150k_fixture(
    directory: str | os.PathLike,
    n: int = 15,
    *,
    corrupt: bool = True,
    missing: bool = True,
    random_state: int | np.random.Generator = 0,
) -> DatasetFixture:
    """Write ``directory/MMHS150K/`` with ``MMHS150K_GT.json`` (tweet id -> ``img_url``,
    ``labels`` (three annotator labels 0-5), ``tweet_url``, ``tweet_text``, ``labels_str``),
    ``img_resized/<id>.jpg``, OCR files ``img_txt/<id>.json`` (``img_text``) for every other
    tweet, ``splits/{train,val,test}_ids.txt`` and ``hatespeech_keywords.txt``. The label
    triples cycle through cases of both label rules (no hate, one vote, two votes, a 2-1
    majority, three different labels). ``corrupt``: the first train image is not a JPEG;
    ``missing``: the first val image is not written."""
    if n < 6:
        raise ValueError(f"n must be at least 6, got {n}")
    rng = check_random_state(random_state)
    root = Path(directory) / "MMHS150K"
    (root / "img_resized").mkdir(parents=True, exist_ok=True)
    (root / "img_txt").mkdir(exist_ok=True)
    (root / "splits").mkdir(exist_ok=True)
    ids = [str(1_100_000_000_000_000_000 + v) for v in _unique_ints(rng, 10**17, n)]
    cases = ([0, 0, 0], [1, 0, 0], [1, 2, 0], [4, 4, 0], [1, 2, 3], [3, 3, 3], [0, 5, 0], [2, 2, 1])
    gt = {}
    for k, tid in enumerate(ids):
        labels = list(cases[k % len(cases)])
        gt[tid] = {
            "img_url": f"http://pbs.twimg.com/media/{tid[-8:]}.jpg",
            "labels": labels,
            "tweet_url": f"https://twitter.com/user{k}/status/{tid}",
            "tweet_text": f"@user{k} {_sentence(rng, int(rng.integers(4, 12)))} https://t.co/{tid[-6:]}",
            "labels_str": [MMHS150K_CLASSES[v] for v in labels],
        }
        buf = io.BytesIO()
        _image(rng, (24, 24)).save(buf, format="JPEG", quality=90)
        (root / "img_resized" / f"{tid}.jpg").write_bytes(buf.getvalue())
        if k % 2 == 0:
            (root / "img_txt" / f"{tid}.json").write_text(json.dumps({"img_text": _sentence(rng, 3)}))
    (root / "MMHS150K_GT.json").write_text(json.dumps(gt))
    splits = _split3(ids, (0.6, 0.2))
    for split, name in (("train", "train_ids.txt"), ("validation", "val_ids.txt"), ("test", "test_ids.txt")):
        (root / "splits" / name).write_text("".join(f"{i}\n" for i in splits[split]))
    (root / "hatespeech_keywords.txt").write_text("keyword\n")
    return _described(root, splits, gt,
                      corrupt=root / "img_resized" / f"{splits['train'][0]}.jpg" if corrupt else None,
                      missing=root / "img_resized" / f"{splits['validation'][0]}.jpg" if missing else None)
