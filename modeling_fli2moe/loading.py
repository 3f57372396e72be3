"""Checked loading and saving of FL-I2MoE checkpoints, installed on the package's model classes.

The model file that checkpoints carry as remote code loads and saves as any transformers model does. With the
package installed, `FLI2MoEModel.from_pretrained` / `save_pretrained` (and so the CLI, the Space and
`AutoModel` without `trust_remote_code`) also:

- write `checksums.json` beside the weights on save (`integrity.record_checkpoint`), and check a folder before
  loading it (`integrity.verify_checkpoint`: missing or empty folders, broken `config.json`, truncated or
  corrupt weights, a config edited after saving), each with one error naming the file and the fix;
- with `strict=True` (the default), refuse weights with NaN or inf values and weights that do not match the
  config (missing, unexpected or mismatched tensors), instead of keeping random initial values silently.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from .integrity import record_checkpoint, verify_checkpoint
from .modeling_fli2moe import FLI2MoEPreTrainedModel

__all__ = ["register"]

_plain_from_pretrained = PreTrainedModel.from_pretrained.__func__
_plain_save_pretrained = PreTrainedModel.save_pretrained


def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, strict: bool = True, **kwargs: Any):
    """Load a checkpoint; with `strict=True` (default) check it first and refuse one whose tensors are not
    finite or do not match its config (`strict=False` keeps random initial values for missing tensors)."""
    want_info = kwargs.pop("output_loading_info", False)
    if strict and not kwargs.get("subfolder"):
        given = kwargs.get("config")
        verify_checkpoint(pretrained_model_name_or_path, lambda: (
            given if hasattr(given, "to_dict") else cls.config_class.from_pretrained(pretrained_model_name_or_path)
        ).to_dict())
    model, info = _plain_from_pretrained(cls, pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
    if strict:
        bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path!s} has NaN or inf values in {bad[:8]}: the weights are "
                "corrupt; restore them from the original run or the Hub, or retrain."
            )
        problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            details = "; ".join(f"{k.replace('_', ' ')}: {v[:8]}{' ...' if len(v) > 8 else ''}" for k, v in problems.items() if v)
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path!s} does not match its config ({details}). It was saved from "
                "a different model or edited; re-save it with save_pretrained, or pass strict=False to load it anyway "
                "(missing tensors stay randomly initialised)."
            )
    return (model, info) if want_info else model


def save_pretrained(self, save_directory, *args: Any, is_main_process: bool = True, **kwargs: Any) -> None:
    """Save as transformers does, plus `checksums.json` (the weights' SHA-256 and the model config)."""
    _plain_save_pretrained(self, save_directory, *args, is_main_process=is_main_process, **kwargs)
    if is_main_process:
        record_checkpoint(save_directory, self.config.to_dict())


def register() -> None:
    """Install the checked `from_pretrained` and `save_pretrained` on the package's `FLI2MoEPreTrainedModel`."""
    FLI2MoEPreTrainedModel.from_pretrained = classmethod(from_pretrained)
    FLI2MoEPreTrainedModel.save_pretrained = save_pretrained
