"""MM-IMDb loader (raw public layout) and the raw-file checks shared by all dataset loaders.

The raw-file checks live here, not in the package ``__init__``, so that ``enrico.py`` and
``mmhs150k.py`` can import them without an import cycle.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, Features, Image, List, Value

logger = logging.getLogger(__name__)

__all__ = ["MMIMDB_GENRES", "load_mmimdb", "check_image", "read_json"]

#: The 23 MM-IMDb genres in the fixed label order of the paper.
MMIMDB_GENRES: tuple[str, ...] = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
    "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History",
    "Music", "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir",
)  # fmt: skip

OnError = Literal["skip", "raise"]
VerifyMode = Literal["fast", "full", "none"]

_JPEG_EOI = b"\xff\xd9"


# --------------------------------------------------------------------------------------
# Shared raw-file checks (used by the ENRICO and MMHS150K loaders too)
# --------------------------------------------------------------------------------------


def check_image(path: str | os.PathLike, verify: VerifyMode = "fast") -> str | None:
    """Check one image file cheaply; return ``None`` when usable, else the reason it is not.

    ``"fast"``: the file exists, PIL identifies it and ``Image.verify()`` passes (PNG: all
    chunk CRCs), and a JPEG must end with its end-of-image marker, otherwise it is fully
    decoded to decide (a truncated JPEG passes ``verify()``). ``"full"``: always decode.
    ``"none"``: only check that the file exists.
    """
    from PIL import Image as PILImage

    path = Path(path)
    if not path.is_file():
        return "missing"
    if verify == "none":
        return None
    if verify not in ("fast", "full"):
        raise ValueError(f"verify_images must be 'fast', 'full' or 'none', got {verify!r}")
    try:
        with PILImage.open(path) as img:
            fmt = img.format
            img.verify()
        decode = verify == "full"
        if fmt == "JPEG" and not decode:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 64))
                tail = fh.read().rstrip(b"\x00\r\n\t ")
            decode = not tail.endswith(_JPEG_EOI)
        if decode:
            with PILImage.open(path) as img:
                img.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return f"corrupt: {type(exc).__name__}: {exc}"
    return None


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """Read a JSON file; a missing file raises ``FileNotFoundError`` and an invalid or
    truncated one ``ValueError``, both naming the file, what it is and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. {fix}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON (truncated or corrupt?): {exc}. {fix}") from exc


def check_root(root: str | os.PathLike, name: str, expected: str, marker: str) -> Path:
    """Resolve a dataset root folder, raising ``FileNotFoundError`` with a hint when it is
    missing or when ``marker`` sits one folder below (the archive's parent was passed)."""
    if root is None or str(root) == "":
        raise ValueError(f"{name}: no root given. Pass the path of {expected}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{name} root {path} does not exist or is not a folder. Pass the path of {expected}; "
            "nothing is downloaded automatically."
        )
    if not (path / marker).exists():
        below = sorted(p.parent for p in path.glob(f"*/{marker}"))
        hint = f" Did you mean {below[0]}?" if below else ""
        raise FileNotFoundError(f"{name}: {path / marker} not found.{hint} Pass the path of {expected}.")
    return path


def check_on_error(on_error: str) -> None:
    """Validate an ``on_error`` argument."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")


def find_bad_files(
    paths: Sequence[Path], verify: VerifyMode, num_workers: int, is_image: Callable[[Path], bool] | None = None
) -> dict[Path, str]:
    """Check many files in a thread pool; return ``{path: reason}`` for the unusable ones.

    Files for which ``is_image`` is false are only checked for existence.
    """
    if verify not in ("fast", "full", "none"):
        raise ValueError(f"verify_images must be 'fast', 'full' or 'none', got {verify!r}")

    def one(p: Path) -> str | None:
        if is_image is not None and not is_image(p):
            return None if p.is_file() else "missing"
        return check_image(p, verify)

    if num_workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            reasons = list(pool.map(one, paths, chunksize=64))
    else:
        reasons = [one(p) for p in paths]
    return {p: r for p, r in zip(paths, reasons) if r is not None}


def handle_bad_files(bad: dict[Path, str], name: str, on_error: OnError, fix: str) -> None:
    """Raise for the first bad file (``on_error="raise"``) or emit ONE warning naming every
    skipped file and the count (``on_error="skip"``)."""
    if not bad:
        return
    items = sorted(bad.items(), key=lambda kv: str(kv[0]))
    if on_error == "raise":
        path, reason = items[0]
        more = f" (and {len(items) - 1} more bad file(s))" if len(items) > 1 else ""
        msg = f"{name}: bad file {path} ({reason}){more}. {fix} Or pass on_error='skip' to drop such examples."
        if reason == "missing":
            raise FileNotFoundError(msg)
        raise ValueError(msg)
    listing = "; ".join(f"{p} ({r})" for p, r in items)
    warnings.warn(
        f"{name}: skipped {len(items)} example(s) with missing or corrupt files: {listing}",
        UserWarning,
        stacklevel=3,
    )


def make_splits(rows: dict[str, list[dict[str, Any]]], features: Features) -> DatasetDict:
    """Build a ``DatasetDict`` from per-split lists of row dicts (columns in ``features`` order)."""
    out = {}
    for split, split_rows in rows.items():
        columns = {col: [r[col] for r in split_rows] for col in features}
        out[split] = Dataset.from_dict(columns, features=features, split=split)
    return DatasetDict(out)


# --------------------------------------------------------------------------------------
# MM-IMDb
# --------------------------------------------------------------------------------------

_MMIMDB_FIX = "Re-extract mmimdb.tar.gz (https://archive.org/download/mmimdb/mmimdb.tar.gz)."
_MMIMDB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def _mmimdb_text(plots: Any, plot: str, path: Path) -> str:
    if isinstance(plots, str):
        plots = [plots]
    if not isinstance(plots, list) or not plots or not all(isinstance(p, str) for p in plots):
        raise ValueError(
            f"MM-IMDb: {path} has no usable 'plot' (expected a non-empty list of strings, got "
            f"{type(plots).__name__}). {_MMIMDB_FIX}"
        )
    if plot == "first":
        return plots[0]
    if plot == "longest":
        return max(plots, key=len)
    return "\n".join(plots)


def load_mmimdb(
    root: str | os.PathLike,
    *,
    plot: Literal["first", "longest", "all"] = "first",
    on_error: OnError = "skip",
    verify_images: VerifyMode = "fast",
    num_workers: int = 4,
) -> DatasetDict:
    """Load MM-IMDb from its extracted ``mmimdb/`` folder as a ``DatasetDict``.

    ``root`` holds ``dataset/<id>.json`` + ``dataset/<id>.jpeg`` and ``split.json`` (keys
    ``train``, ``dev``, ``test``; ``dev`` becomes ``validation``). The official split file is
    used as is. Columns: ``id`` (str), ``text`` (the first plot by default; ``plot="longest"``
    as in MMBT, or ``"all"`` joined by newlines), ``image`` (``datasets.Image``, decoded lazily
    from the path) and ``labels`` (23 floats, multi-hot in :data:`MMIMDB_GENRES` order; other
    genres such as News or Reality-TV are dropped, with ONE ``UserWarning`` counting them per genre and
    the movies left with no label).

    Bad files, our choice for MM-IMDb (``on_error="skip"``): an example whose poster is
    missing or corrupt, or whose JSON file is missing, is dropped and ONE ``UserWarning``
    names every skipped file and the count; ``on_error="raise"`` raises instead. Always
    raised: missing root or ``split.json`` (``FileNotFoundError``), invalid/truncated JSON, a
    JSON without ``plot`` or ``genres``, a malformed split file or an id in two splits
    (``ValueError``). Images are checked at load time (``verify_images``, see
    :func:`check_image`) so a corrupt poster never reaches training. Nothing downloads.
    """
    if plot not in ("first", "longest", "all"):
        raise ValueError(f"plot must be 'first', 'longest' or 'all', got {plot!r}")
    check_on_error(on_error)
    root = check_root(root, "MM-IMDb", "the extracted mmimdb/ folder (with dataset/ and split.json)", "split.json")
    splits = read_json(root / "split.json", "MM-IMDb split file", _MMIMDB_FIX)
    if not isinstance(splits, dict) or set(_MMIMDB_SPLITS) - set(splits):
        found = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
        raise ValueError(
            f"MM-IMDb split file {root / 'split.json'} must be an object with keys 'train', 'dev', "
            f"'test' (found {found}). {_MMIMDB_FIX}"
        )
    seen: dict[str, str] = {}
    for key in _MMIMDB_SPLITS:
        ids = splits[key]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(
                f"MM-IMDb split file {root / 'split.json'}: '{key}' must be a list of id strings "
                f"(e.g. '0076759'). {_MMIMDB_FIX}"
            )
        for i in ids:
            if i in seen:
                raise ValueError(
                    f"MM-IMDb split file {root / 'split.json'}: id {i!r} is in both '{seen[i]}' and '{key}'. "
                    f"{_MMIMDB_FIX}"
                )
            seen[i] = key

    data_dir = root / "dataset"
    all_ids = [i for key in _MMIMDB_SPLITS for i in splits[key]]
    files = [data_dir / f"{i}{ext}" for i in all_ids for ext in (".json", ".jpeg")]
    bad = find_bad_files(files, verify_images, num_workers, is_image=lambda p: p.suffix == ".jpeg")
    handle_bad_files(bad, "MM-IMDb", on_error, _MMIMDB_FIX)

    genre_index = {g: k for k, g in enumerate(MMIMDB_GENRES)}
    dropped: Counter[str] = Counter()
    unlabelled: Counter[str] = Counter()
    rows: dict[str, list[dict[str, Any]]] = {}
    for key, split in _MMIMDB_SPLITS.items():
        rows[split] = []
        for i in splits[key]:
            jpath, ipath = data_dir / f"{i}.json", data_dir / f"{i}.jpeg"
            if jpath in bad or ipath in bad:
                continue
            meta = read_json(jpath, "MM-IMDb metadata file", _MMIMDB_FIX)
            if not isinstance(meta, dict) or not isinstance(meta.get("genres"), list):
                raise ValueError(f"MM-IMDb: {jpath} has no 'genres' list. {_MMIMDB_FIX}")
            labels = [0.0] * len(MMIMDB_GENRES)
            for g in meta["genres"]:
                if g in genre_index:
                    labels[genre_index[g]] = 1.0
                else:
                    dropped[str(g)] += 1
            if not any(labels):
                unlabelled[split] += 1
            text = _mmimdb_text(meta.get("plot"), plot, jpath)
            rows[split].append({"id": i, "text": text, "image": str(ipath), "labels": labels})
    if dropped:
        left = (f"; {sum(unlabelled.values())} movie(s) are left with no label at all ({dict(unlabelled)}), "
                "all-zero targets" if unlabelled else "")
        warnings.warn(
            f"MM-IMDb: dropped {sum(dropped.values())} genre label(s) outside the 23 kept genres (MMIMDB_GENRES): "
            f"{dict(dropped.most_common())}{left}",
            UserWarning,
            stacklevel=2,
        )
    features = Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "image": Image(),
            "labels": List(Value("float32"), length=len(MMIMDB_GENRES)),
        }
    )
    ds = make_splits(rows, features)
    logger.info("MM-IMDb loaded from %s: %s", root, {k: len(v) for k, v in ds.items()})
    return ds
