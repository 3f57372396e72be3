"""Feature cache: the frozen encoders run once per example, through ``Dataset.map`` into arrow files.

Layout: ``<cache_dir>/<modality>-<encoder key>/<split>-<dataset fingerprint>.arrow``, one file per
split and modality. The encoder key hashes the modality's resolved encoder spec, ``max_tokens``,
``input_dim`` and the weights' identity (:func:`~modeling_fli2moe.encoders.encoder_cache_key`), so
changing one modality's encoder re-encodes only that modality, and a second call with the same
data reads the files back without loading any encoder.

Cached columns per modality ``<name>``: ``<name>_features`` (``Array2D((T, D), "float16")``),
``<name>_mask`` and ``<name>_player_mask`` (``T`` bools); text modalities also get
``<name>_tokens`` (token strings of the valid positions) and ``<name>_word_ids`` (word index per
valid position, -1 for special tokens). All other columns are kept (ids, ``label`` / ``labels``,
ground-truth metadata, raw text) except image columns, which are dropped. The returned splits are
formatted as torch tensors with the cached dtypes kept (fp16 features, bool masks).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Array2D, Dataset, DatasetDict, Features, Image, List, Value, concatenate_datasets

from .configuration_fli2moe import FLI2MoEConfig
from .integrity import sha256_file, write_json_atomic
from .locking import FileLock
from .encoders import (  # noqa: F401  (build_encoders: re-exported, tests patch it here)
    FrozenEncoder,
    build_encoders,
    encoder_cache_key,
    encoder_for_modality,
    resolve_encoder_spec,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURE_CACHE_VERSION",
    "LABEL_COLUMNS",
    "feature_columns",
    "text_columns",
    "cached_columns",
    "cache_features",
    "default_cache_dir",
    "format_cached",
    "modality_means",
    "record_cache_file",
    "verify_cache_file",
]

def default_cache_dir() -> Path:
    """Where features are cached when no folder is given: `$FLI2MOE_CACHE/features`, by default
    `~/.cache/fli2moe/features`."""
    return Path(os.environ.get("FLI2MOE_CACHE", Path.home() / ".cache" / "fli2moe")) / "features"


#: Bump when the cached layout changes: old files are then ignored (they live under other names).
FEATURE_CACHE_VERSION = 1
LABEL_COLUMNS = ("labels", "label")
_WRITER_BYTES = 64 * 2**20  # flush the arrow writer about every 64 MiB


def feature_columns(name: str) -> tuple[str, str, str]:
    """Cached column names of one modality: features, validity mask, player mask."""
    return f"{name}_features", f"{name}_mask", f"{name}_player_mask"


def text_columns(name: str) -> tuple[str, str]:
    """Display columns of a text modality: token strings and word ids."""
    return f"{name}_tokens", f"{name}_word_ids"


def _is_text(modality: Mapping[str, Any]) -> bool:
    return (modality.get("encoder") or {}).get("type") == "hf-text"


def cached_columns(config: FLI2MoEConfig) -> list[str]:
    """Every column :func:`cache_features` adds, in order."""
    cols: list[str] = []
    for m in config.modalities:
        cols += feature_columns(m["name"])
        if _is_text(m):
            cols += text_columns(m["name"])
    return cols


def _tensor_columns(config: FLI2MoEConfig, column_names: Sequence[str]) -> list[str]:
    cols = [c for m in config.modalities for c in feature_columns(m["name"])]
    return cols + [c for c in LABEL_COLUMNS if c in column_names]


def format_cached(dataset: Dataset, config: FLI2MoEConfig) -> Dataset:
    """Torch format on the feature, mask and label columns keeping the stored dtypes (fp16 features,
    bool masks); other columns stay Python objects."""
    cols = [c for c in _tensor_columns(config, dataset.column_names) if c in dataset.column_names]
    # dtype=None: datasets' torch formatter would otherwise cast every float array to float32
    return dataset.with_format("torch", columns=cols, output_all_columns=True, dtype=None)


def _modality_features(modality: Mapping[str, Any], encoder: FrozenEncoder) -> Features:
    name, t, d = modality["name"], encoder.num_tokens, encoder.output_dim
    f, mk, pm = feature_columns(name)
    feats: dict[str, Any] = {
        f: Array2D(shape=(t, d), dtype="float16"),
        mk: List(Value("bool"), length=t),
        pm: List(Value("bool"), length=t),
    }
    if _is_text(modality):
        tok, wid = text_columns(name)
        feats[tok] = List(Value("string"))
        feats[wid] = List(Value("int32"))
    return Features(feats)


def _encode_fn(modality: Mapping[str, Any], get_encoder: Any, has_id: bool) -> Any:
    name = modality["name"]
    f, mk, pm = feature_columns(name)
    tok, wid = text_columns(name)
    text = _is_text(modality)

    def encode(values: list[Any], ids: list[Any] | None = None) -> dict[str, Any]:
        out = get_encoder().encode(values, ids=ids, modality=name)
        feats = out["features"]
        half = feats.to(torch.float16)
        if not torch.isfinite(half).all():
            raise ValueError(
                f"modality {name!r}: encoder features overflow fp16 (max |x| = {feats.abs().max().item():.3g}); "
                "the fp16 feature cache cannot store them"
            )
        res: dict[str, Any] = {
            f: half.numpy(),
            mk: out["attention_mask"].bool().numpy(),
            pm: out["player_mask"].bool().numpy(),
        }
        if text:
            res[tok] = out["tokens"]
            res[wid] = out["word_ids"]
        return res

    if has_id:
        return encode
    return lambda values: encode(values, None)


def cache_features(
    dataset_dict: DatasetDict | Dataset,
    config: FLI2MoEConfig,
    cache_dir: str | os.PathLike,
    batch_size: int = 32,
    *,
    encoders: Mapping[str, FrozenEncoder] | None = None,
    device: str | torch.device | None = None,
    drop_columns: Sequence[str] = (),
    lock_timeout: float = 3600.0,
) -> DatasetDict | Dataset:
    """Encode every split with the config's frozen encoders once, or read the arrow cache back.

    ``encoders`` (optional) maps modality names to already built encoders; otherwise they are built
    only for the modalities whose cache files are missing. ``drop_columns`` removes more raw
    columns (image columns are always dropped). Returns the cached splits (see the module docstring),
    formatted by :func:`format_cached`.

    Each file is written under a lock (another process encoding the same file is waited for, up to
    ``lock_timeout`` seconds) and its row count, size and SHA-256 are recorded next to it; a file that no
    longer matches (truncated, zero-byte, overwritten) or holds non-finite features is rebuilt with a
    warning naming it.
    """
    if isinstance(dataset_dict, Dataset):
        return cache_features(
            DatasetDict({dataset_dict.split or "data": dataset_dict}), config, cache_dir, batch_size,
            encoders=encoders, device=device, drop_columns=drop_columns, lock_timeout=lock_timeout,
        )[str(dataset_dict.split or "data")]  # fmt: skip
    if not isinstance(dataset_dict, DatasetDict):
        raise TypeError(f"cache_features expects a datasets.DatasetDict, got {type(dataset_dict).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    root = Path(cache_dir).expanduser()
    built: dict[str, FrozenEncoder] = dict(encoders or {})
    shared: dict[str, FrozenEncoder] = {}

    def encoder_of(modality: Mapping[str, Any]) -> FrozenEncoder:
        name = modality["name"]
        if name not in built:
            spec_key = json.dumps([resolve_encoder_spec(modality), modality.get("input_dim"), modality.get("max_tokens")])
            if spec_key not in shared:
                logger.info("building the %s encoder of modality %r", modality["encoder"]["type"], name)
                shared[spec_key] = encoder_for_modality(modality, batch_size=batch_size, device=device)
            built[name] = shared[spec_key]
        return built[name]

    keys = {}
    for m in config.modalities:
        key = encoder_cache_key(m)  # also validates the encoder spec
        keys[m["name"]] = key
        folder = root / f"{m['name']}-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        info = folder / "encoder.json"
        if not info.exists():
            info.write_text(json.dumps({"version": FEATURE_CACHE_VERSION, "modality": m}, indent=2, default=str) + "\n")

    out = {}
    for split, ds in dataset_dict.items():
        parts = []
        for m in config.modalities:
            name, col = m["name"], m.get("column", m["name"])
            if col not in ds.column_names:
                raise ValueError(
                    f"split {split!r} has no column {col!r} for modality {name!r} (columns: {ds.column_names}); "
                    "set the modality's 'column' in config.modalities"
                )
            clash = [c for c in cached_columns(config) if c in ds.column_names]
            if clash:
                raise ValueError(f"split {split!r} already has the cached column(s) {clash}; was it cached twice?")
            if len(ds) == 0:  # map() would return no columns at all: an empty table with the schema
                feats = _modality_features(m, encoder_of(m))
                parts.append(Dataset.from_dict({c: [] for c in feats}, features=feats))
                continue
            path = root / f"{name}-{keys[name]}" / f"{split}-{ds._fingerprint}-v{FEATURE_CACHE_VERSION}.arrow"
            hit = path.is_file() and verify_cache_file(path, len(ds), name)
            lock = None
            if not hit:  # encode under a lock; another process may have written it while we waited
                lock = FileLock(f"{path}.lock", f"feature cache file {path}", timeout=lock_timeout).acquire()
                hit = path.is_file() and verify_cache_file(path, len(ds), name)
            has_id = "id" in ds.column_names and col != "id"
            inputs = [col, "id"] if has_id else [col]
            src = ds.select_columns(inputs)
            if isinstance(src.features[col], Image):
                src = src.cast_column(col, Image(decode=False))  # decode ourselves: errors name the file
            features = None
            if not hit:
                enc = encoder_of(m)
                features = _modality_features(m, enc)
                row_bytes = enc.num_tokens * enc.output_dim * 2
            else:
                logger.info("modality %r, split %r: reading cached features from %s", name, split, path)
                row_bytes = 1
            try:
                part = src.map(
                    _encode_fn(m, lambda m=m: encoder_of(m), has_id),
                    batched=True,
                    batch_size=batch_size,
                    input_columns=inputs,
                    remove_columns=src.column_names,
                    features=features,
                    cache_file_name=str(path),
                    load_from_cache_file=True,
                    new_fingerprint=f"{ds._fingerprint}{keys[name]}"[:64],
                    writer_batch_size=max(batch_size, min(1000, _WRITER_BYTES // row_bytes)),
                    desc=f"Encoding {name} ({split})",
                )
                if not hit:
                    record_cache_file(path, len(part))
            finally:
                if lock is not None:
                    lock.release()
            parts.append(part)
        drop = [c for c, feat in ds.features.items() if isinstance(feat, Image) or c in drop_columns]
        base = ds.remove_columns(drop) if drop else ds
        if len(ds) == 0:  # concatenate_datasets skips empty tables: build the empty schema by hand
            schema = Features({**base.features, **{k: v for p in parts for k, v in p.features.items()}})
            merged = Dataset.from_dict({c: [] for c in schema}, features=schema, split=ds.split)
        elif base.column_names:
            merged = concatenate_datasets([base, *parts], axis=1)
        else:
            merged = concatenate_datasets(parts, axis=1)
        out[split] = format_cached(merged, config)
    return DatasetDict(out)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def record_cache_file(path: str | os.PathLike, rows: int) -> None:
    """Record a cache file's row count, size and SHA-256 next to it (``<file>.json``), checked when it is opened."""
    path = Path(path)
    write_json_atomic(_record_path(path), {"version": FEATURE_CACHE_VERSION, "rows": int(rows),
                                           "size": path.stat().st_size, "sha256": sha256_file(path)})  # fmt: skip


def _cache_file_problem(path: Path, rows: int, modality: str) -> str | None:
    record_path = _record_path(path)
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    record = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            record = None
    if isinstance(record, dict) and "sha256" in record:
        if record.get("rows") != rows:
            return f"it holds {record.get('rows')} rows but the split has {rows}"
        if record.get("size") != size:
            return f"it has {size} bytes but {record.get('size')} were written (truncated or overwritten)"
        if sha256_file(path) != record["sha256"]:
            return "its checksum differs from the one recorded when it was written (corrupt)"
        return None
    # no record (written by an older version, or the writer stopped before recording): check the content
    try:
        data = Dataset.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - arrow raises several types for damaged files
        return f"it cannot be read ({type(err).__name__}: {err})"
    if len(data) != rows:
        return f"it holds {len(data)} rows but the split has {rows}"
    col = feature_columns(modality)[0]
    if col not in data.column_names:
        return f"it has no {col!r} column"
    arr = data.with_format("numpy", columns=[col], dtype=None)
    for start in range(0, len(arr), 256):
        x = arr[start : start + 256][col]
        if not np.isfinite(np.asarray(x, dtype=np.float32)).all():
            return "it holds NaN or inf features"
    record_cache_file(path, rows)
    return None


def verify_cache_file(path: str | os.PathLike, rows: int, modality: str) -> bool:
    """True when a cache file is intact; a damaged one is deleted (with a warning naming it) so it is rebuilt."""
    path = Path(path)
    problem = _cache_file_problem(path, rows, modality)
    if problem is None:
        return True
    warnings.warn(f"feature cache file {path} is damaged ({problem}); deleting it and encoding again", UserWarning,
                  stacklevel=3)  # fmt: skip
    path.unlink(missing_ok=True)
    _record_path(path).unlink(missing_ok=True)
    return False


def modality_means(cached_train: Dataset, config: FLI2MoEConfig, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Per-modality dataset-mean token over the valid tokens of the (cached) train split: the
    masking / knock-out fill. Returns ``{name: float32 tensor (input_dim,)}``."""
    names = config.modality_names
    cols = [c for n in names for c in feature_columns(n)[:2]]
    missing = [c for c in cols if c not in cached_train.column_names]
    if missing:
        raise ValueError(f"modality_means needs a split made by cache_features; missing columns {missing}")
    data = cached_train.with_format("numpy", columns=cols, dtype=None)
    sums = {n: np.zeros(config.modality(n)["input_dim"], dtype=np.float64) for n in names}
    counts = dict.fromkeys(names, 0)
    for start in range(0, len(data), batch_size):
        rows = data[start : start + batch_size]
        for n in names:
            f, mk, _ = feature_columns(n)
            x, mask = rows[f].astype(np.float32), rows[mk].astype(np.float32)
            sums[n] += np.einsum("btd,bt->d", x, mask, dtype=np.float64)
            counts[n] += int(mask.sum())
    empty = [n for n in names if counts[n] == 0]
    if empty:
        raise ValueError(f"modality_means: modality {empty[0]!r} has no valid token in the train split")
    return {n: torch.from_numpy(sums[n] / counts[n]).float() for n in names}
