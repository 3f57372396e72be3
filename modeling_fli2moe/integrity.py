"""Checksums recorded with checkpoints, and the checks that read them back on load.

`record_checkpoint` writes `checksums.json` next to the weights: the size and SHA-256 of every
`*.safetensors` file and the model-defining fields of the config they were saved with.
`verify_checkpoint` checks a folder before it is loaded and raises one clear error naming the broken
file and what to do: a missing or empty folder, a missing or invalid `config.json`, missing, zero-byte,
truncated or corrupt weights (checksum), and a `config.json` edited after saving (e.g. `num_heads`,
whose weight shapes still fit).

`verify_checkpoint` is the one check of a checkpoint folder's model files: resuming
(`checkpoints.checkpoint_problem`), pushing (`hub.check_checkpoint_dir`) and building a Space call it and
check only what they need besides, and the package's `from_pretrained` (`loading.py`) runs it before every load.
It imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

INTEGRITY_FILE = "checksums.json"
INTEGRITY_FORMAT = 1
#: The config fields that shape the weights, listed here once and used wherever a checkpoint is compared
#: with a config. ARCHITECTURE_FIELDS: the model's size and layout (a checkpoint's tensors fit only a config
#: that agrees on all of them); WEIGHT_FIELDS: with the modalities and the label count, all that the weights
#: were trained for; MODEL_FIELDS: with the fields that change what the weights compute, the ones whose edit
#: after saving is refused.
ARCHITECTURE_FIELDS = (
    "hidden_size", "num_layers", "num_heads", "ffn_multiplier", "router_layers", "router_hidden_size", "mixture",
)  # fmt: skip
WEIGHT_FIELDS = ("modalities", *ARCHITECTURE_FIELDS, "num_labels")
MODEL_FIELDS = (*WEIGHT_FIELDS, "router_temperature", "problem_type")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as it is (the message names the file and the fix)."""


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over `path` (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model-defining part of a config dict (modalities reduced to what shapes the computation)."""
    out: dict[str, Any] = {}
    for key in MODEL_FIELDS:
        if key == "num_labels":
            value = len(config.get("id2label") or {}) or config.get("num_labels")
        elif key == "modalities":
            value = [
                {"name": m.get("name"), "input_dim": m.get("input_dim"), "max_tokens": m.get("max_tokens"),
                 "encoder": (m.get("encoder") or {}).get("type")}
                for m in config.get("modalities") or []
            ]  # fmt: skip
        else:
            value = config.get(key)
        out[key] = value
    return out


def _fingerprint(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def weight_files(folder: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint: the shards named by the index, else `model.safetensors`."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except json.JSONDecodeError as err:
            raise CheckpointError(
                f"{index} is not valid JSON ({err}): the save was interrupted; re-save the model with save_pretrained"
            ) from None
        return sorted(set(weight_map.values()))
    return ["model.safetensors"]


def record_checkpoint(folder: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write `checksums.json` for the weights in `folder` and the config they were saved with."""
    folder = Path(folder)
    files = {}
    for name in weight_files(folder):
        path = folder / name
        if path.is_file():
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    fields = model_fields(config)
    out = folder / INTEGRITY_FILE
    write_json_atomic(out, {"format": INTEGRITY_FORMAT, "files": files, "config": fields,
                            "config_sha256": _fingerprint(fields)})
    return out


def check_safetensors(path: str | os.PathLike) -> None:
    """Check a safetensors file's framing (header length, header JSON, data size) without loading it."""
    path = Path(path)
    fix = "it was not written completely (full disk, interrupted copy or download); re-save or re-download it"
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes): {fix}")
    if size < 8:
        raise CheckpointError(f"weights file {path} is truncated ({size} bytes, not even a header): {fix}")
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise CheckpointError(
                f"weights file {path} is truncated or corrupt: its header says {header_len} header bytes but the "
                f"file has {size} bytes: {fix}"
            )
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"weights file {path} has a corrupt header (not valid JSON): {fix}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"weights file {path} has a corrupt header: {fix}")
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]  # fmt: skip
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"weights file {path} is truncated ({size} of {expected} bytes): {fix}")
    if size > expected:
        raise CheckpointError(f"weights file {path} has {size - expected} bytes after its last tensor: {fix}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return True
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _looks_local(name: str) -> bool:
    """A name that cannot be a Hub repo id ('user/model'), so it must be a local path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or not _REPO_ID.match(name)


def verify_checkpoint(
    path: str | os.PathLike, config: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
) -> None:
    """Check a local checkpoint folder before loading it; raise `CheckpointError` / `FileNotFoundError`
    naming the broken file and the fix. Hub repo ids (not local folders) are left to transformers.

    With `checksums.json` present, the weights must match their recorded SHA-256 and `config.json` (or
    `config`, when given: the full config dict, or a function returning it, called only when needed, since
    `config.json` leaves out default values) the model fields they were saved with.
    """
    name = os.fspath(path)
    folder = Path(name).expanduser()
    if not folder.exists():
        if _looks_local(name):
            raise FileNotFoundError(
                f"checkpoint folder {folder} does not exist (and {name!r} is not a Hub repo id either). Pass the "
                "folder that `fli2moe train` or save_pretrained wrote (it holds config.json and model.safetensors), "
                "or a Hub repo id such as 'user/model'."
            )
        if _offline() and not _in_hub_cache(name):
            raise FileNotFoundError(
                f"checkpoint {name!r} is neither a local folder nor in the Hugging Face cache, and the Hub is offline "
                "(HF_HUB_OFFLINE=1). Pass the folder that `fli2moe train` or save_pretrained wrote, or download the "
                "repo where the Hub is reachable."
            )
        return  # a Hub repo id: transformers downloads and checks it
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {folder} is a file, not a folder; pass the folder that holds it")
    entries = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise FileNotFoundError(
            f"checkpoint folder {folder} is empty: nothing was saved there. Train with `fli2moe train` or save a "
            "model with model.save_pretrained(folder), then load that folder."
        )
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        subs = sorted((p for p in folder.glob("checkpoint-*") if (p / "config.json").is_file()),
                      key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        hint = (f" It holds Trainer checkpoints: load one of them (e.g. {subs[-1]}), or let the run finish."
                if subs else " Re-save the model with model.save_pretrained(folder).")
        raise FileNotFoundError(f"checkpoint folder {folder} has no config.json, so it is not a model checkpoint.{hint}")
    try:
        saved_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{cfg_path} is not valid JSON ({err}): it was edited or not written completely; restore it or "
            "re-save the model with save_pretrained"
        ) from None
    files = weight_files(folder)
    for fname in files:
        wpath = folder / fname
        if not wpath.is_file():
            others = sorted(p.name for p in folder.glob("pytorch_model*.bin"))  # not training_args.bin
            hint = f" (found {others}: this package saves and loads safetensors)" if others else ""
            raise FileNotFoundError(
                f"checkpoint folder {folder} has no weights file {fname}{hint}; re-save the model with save_pretrained"
            )
        check_safetensors(wpath)
    record_path = folder / INTEGRITY_FILE
    if not record_path.is_file():
        return
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{record_path} is not valid JSON: delete it to load without the checksum check, or re-save the model"
        ) from None
    for fname, info in (record.get("files") or {}).items():
        wpath = folder / fname
        if not wpath.is_file():
            raise FileNotFoundError(f"{wpath}, recorded in {record_path}, is missing; re-save the model")
        if wpath.stat().st_size != info.get("size") or sha256_file(wpath) != info.get("sha256"):
            raise CheckpointError(
                f"weights file {wpath} does not match the checksum recorded when it was saved ({record_path}): it "
                "is corrupt (a changed or damaged byte). Restore it from the original run or the Hub, or retrain."
            )
    saved_fields = record.get("config")
    if isinstance(saved_fields, dict):
        if callable(config):
            config = config()
        current = model_fields(dict(config) if config is not None else saved_config)
        # the raw config.json leaves out default values: compare only the fields it states
        stated = MODEL_FIELDS if config is not None else [
            k for k in MODEL_FIELDS if k in saved_config or (k == "num_labels" and "id2label" in saved_config)
        ]  # fmt: skip
        changed = [k for k in stated if k in saved_fields and current.get(k) != saved_fields.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: saved {saved_fields[k]!r}, now {current.get(k)!r}" for k in changed)
            raise CheckpointError(
                f"{cfg_path} does not match the config the weights were saved with ({diffs}). The weights would "
                "load but compute something else. Restore the saved values, or retrain with the new config."
            )


__all__ = [
    "ARCHITECTURE_FIELDS",
    "CheckpointError",
    "INTEGRITY_FILE",
    "MODEL_FIELDS",
    "WEIGHT_FIELDS",
    "check_safetensors",
    "model_fields",
    "record_checkpoint",
    "sha256_file",
    "verify_checkpoint",
    "weight_files",
    "write_json_atomic",
]
