"""Which precision is fast here: the one bf16 check that training, probes and benchmarks share."""

from __future__ import annotations

import functools

import torch

__all__ = ["bf16_supported", "autocast_dtype_for", "cpu_flags"]


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from `/proc/cpuinfo` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split())
    except OSError:
        return frozenset()


def bf16_supported(device: str | torch.device | None = None) -> bool:
    """True where bf16 is native: a CUDA GPU that supports it, or a CPU with `avx512_bf16` or AMX (read from
    `/proc/cpuinfo`). Elsewhere bf16 matmuls are emulated, slower than fp32, and everything runs in fp32."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast_dtype_for(device: str | torch.device) -> torch.dtype | None:
    """`torch.bfloat16` where bf16 is native on `device`, else None (run in fp32)."""
    return torch.bfloat16 if bf16_supported(device) else None
