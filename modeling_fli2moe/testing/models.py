"""Tiny models and random inputs for tests, examples and benchmarks (shipped, captum-style)."""

from __future__ import annotations

from typing import Any

import torch

from ..configuration_fli2moe import FLI2MoEConfig


def tiny_config(
    dims: tuple[int, ...] = (12, 20),
    names: tuple[str, ...] = ("text", "image"),
    num_labels: int = 3,
    **overrides: Any,
) -> FLI2MoEConfig:
    """A small FL-I2MoE config (H = 16, 2 layers, 4 heads, no dropout) for fast tests."""
    kwargs: dict[str, Any] = dict(
        modalities=[{"name": n, "input_dim": d} for n, d in zip(names, dims)],
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        dropout=0.0,
        router_hidden_size=16,
        num_labels=num_labels,
    )
    kwargs.update(overrides)
    return FLI2MoEConfig(**kwargs)


def random_inputs(
    config: FLI2MoEConfig,
    batch_size: int = 4,
    tokens: dict[str, int] | None = None,
    pad_fraction: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random features `(B, T, D)` and masks `(B, T)` with trailing padding in some rows."""
    features, masks = {}, {}
    for i, m in enumerate(config.modalities):
        t = (tokens or {}).get(m["name"], 5 + 2 * i)
        features[m["name"]] = torch.randn(batch_size, t, m["input_dim"], generator=generator)
        lengths = t - (torch.rand(batch_size, generator=generator) * pad_fraction * t).long()
        masks[m["name"]] = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return features, masks
