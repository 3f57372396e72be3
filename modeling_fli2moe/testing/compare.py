"""Comparing nested JSON-like results (dicts, lists, numbers, strings) with a float tolerance."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["assert_same_values"]


def assert_same_values(got: Any, want: Any, where: str = "value", *, rel_tol: float = 1e-5, abs_tol: float = 1e-6,
                       nan_equal: bool = False) -> None:
    """Equal structure, keys (in order), strings and ints; floats within `rel_tol` / `abs_tol` (float32
    round-off differs between CPUs and batch shapes); NaN equals NaN only with `nan_equal`. The message
    names the first differing place."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            assert_same_values(got[key], want[key], f"{where}.{key}", rel_tol=rel_tol, abs_tol=abs_tol, nan_equal=nan_equal)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same_values(a, b, f"{where}[{i}]", rel_tol=rel_tol, abs_tol=abs_tol, nan_equal=nan_equal)
    elif isinstance(want, float):
        assert isinstance(got, (int, float)), (where, got, want)
        both_nan = nan_equal and got != got and want != want
        assert both_nan or math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol), (where, got, want)
    else:
        assert got == want and type(got) is type(want), (where, got, want)
