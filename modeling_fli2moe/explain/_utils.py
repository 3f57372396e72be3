"""Helpers shared by the explanation modules: eval mode, heads, targets and their values, argument checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_int", "check_target", "eager_attention", "eval_mode", "resolve_head", "select_target", "target_values"]


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int, refusing bools, non-integers and values below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `model` in eval mode (no dropout) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[Any]:
    """Run `model` with the `eager` attention implementation (the one that returns attention
    probabilities, for `output_attentions=True`) and restore its implementation afterwards."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def resolve_head(model: Any, head: int | str) -> str:
    """Canonical head name: ``"mixture"`` or an expert name (``"dense"`` for the dense baseline), by the
    model's own resolver (`FLI2MoEModel.resolve_head`)."""
    return model.resolve_head(head)


def select_target(logits: torch.Tensor, problem_type: str | None) -> list[int]:
    """The target labels of one head's logits `(C,)`: the predicted class; for multi-label the
    predicted-positive labels (logit > 0), the top-1 label if none."""
    logits = logits.detach().float().reshape(-1)
    if problem_type == "multi_label_classification":
        positive = (logits > 0).nonzero().flatten().tolist()
        return positive or [int(logits.argmax())]
    return [int(logits.argmax())]


def check_target(target: int | Sequence[int], num_labels: int) -> list[int]:
    """A label index or a list of them, checked against `num_labels`, as a list."""
    labels = [int(target)] if isinstance(target, (int, np.integer)) else [int(t) for t in target]
    if not labels or any(not 0 <= t < num_labels for t in labels):
        raise ValueError(
            f"target must be a label index or a non-empty list of label indices in [0, {num_labels}), got {target!r}"
        )
    return labels


def target_values(
    logits: torch.Tensor, target: Sequence[int], output: str, problem_type: str | None
) -> torch.Tensor:
    """Values `(k,)` from logits `(k, C)`: the mean target logit, the mean target log-odds, or the mean
    target probability (softmax for single-label, sigmoid for multi-label and single-logit models).

    Log-odds `log p_t - log(1 - p_t)` is `logit_t - logsumexp(other logits)` for softmax heads: unlike
    one raw logit it does not move when every logit shifts by the same amount (which a softmax
    ignores), and it does not saturate like a probability. For sigmoid heads it is the logit itself."""
    logits = logits.float()
    index = torch.as_tensor(list(target), dtype=torch.long, device=logits.device)
    if output == "logit":
        return logits.index_select(-1, index).mean(-1)
    if output == "log_odds":
        if problem_type == "regression":
            raise ValueError("output='log_odds' is undefined for a regression model; use output='logit'")
        if problem_type == "multi_label_classification" or logits.shape[-1] == 1:
            return logits.index_select(-1, index).mean(-1)
        values = []
        for t in index.tolist():
            others = torch.cat([logits[..., :t], logits[..., t + 1 :]], dim=-1)
            values.append(logits[..., t] - torch.logsumexp(others, dim=-1))
        return torch.stack(values, dim=-1).mean(-1)
    if problem_type == "regression":
        raise ValueError("output='probability' is undefined for a regression model; use output='logit'")
    if problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        return torch.sigmoid(logits.index_select(-1, index)).mean(-1)
    return F.softmax(logits, dim=-1).index_select(-1, index).mean(-1)
