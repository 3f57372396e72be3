"""Decoding images: every form a dataset or a user gives an image in, to an RGB ``PIL.Image``."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_image"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_image(item: Any, where: str = "image") -> Any:
    """Return an RGB ``PIL.Image`` from a PIL image, a path, a ``{"bytes", "path"}`` dict (datasets'
    undecoded ``Image``) or a uint8 ``(H, W, 3)`` array; raise ``ValueError`` naming ``where`` and the
    file for a corrupt image and ``TypeError`` for something that is not an image."""
    from PIL import Image

    src: Any = item
    label = where
    if isinstance(item, Image.Image):
        try:
            return item.convert("RGB")
        except Exception as exc:
            raise ValueError(f"{where}: cannot decode the PIL image ({type(exc).__name__}: {exc})") from exc
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise TypeError(f"{where}: an array image must be uint8 (H, W) or (H, W, C), got {item.dtype} {item.shape}")
        return Image.fromarray(item).convert("RGB")
    if isinstance(item, Mapping) and ("bytes" in item or "path" in item):
        if item.get("bytes") is not None:
            src = io.BytesIO(item["bytes"])
            label = f"{where} ({item.get('path') or 'in-memory bytes'})"
        elif item.get("path") is not None:
            src = item["path"]
        else:
            raise TypeError(f"{where}: the image dict has neither 'bytes' nor 'path'")
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        label = f"{where} ({path})"
        if not os.path.isfile(path):
            raise TypeError(
                f"{label} is not an image: expected a PIL image, an image file path or a {{'bytes', 'path'}} dict; "
                f"got the string {path[:80]!r}, which is not an existing file"
            )
    elif not isinstance(src, io.BytesIO):
        raise TypeError(
            f"{where} is not an image: expected a PIL image, an image file path or a {{'bytes', 'path'}} dict, "
            f"got {type(item).__name__}"
        )
    try:
        with Image.open(src) as img:
            return img.convert("RGB")  # forces a full decode: truncated files fail here
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(
            f"{label}: corrupt or unreadable image ({type(exc).__name__}: {exc}). "
            "Replace the file or drop the example (the dataset loaders' on_error='skip' does so)."
        ) from exc
