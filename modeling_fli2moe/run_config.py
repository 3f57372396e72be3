"""The run config: the file `fli2moe train` reads (`hub_configs/*.json`), its schema and its overrides.

A run config holds the model's fields at the top level, plus a `dataset` section (loader, data folder,
loader options, selection metric) and a `training` section (`TrainingArguments` fields). `load_run_config`
reads one into a `RunConfig`, applying `key=value` overrides and validating every key and value before
long work starts. Only the model's fields reach `FLI2MoEConfig`, so a checkpoint's `config.json` carries
no data folders or training settings; the run's sections are recorded in `run.json` next to the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from .configuration_fli2moe import FLI2MoEConfig

#: top-level keys of a hub config that are not FLI2MoEConfig.__init__ arguments but are accepted
_CONFIG_EXTRA_KEYS = {
    "num_labels", "id2label", "label2id", "problem_type", "architectures", "auto_map", "model_type",
    "transformers_version", "dtype", "torch_dtype", "_name_or_path", "return_dict", "output_hidden_states",
}
#: defaults of the training section (the paper's reference settings); any TrainingArguments field may be given
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 40,
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "seed": 0,
    "max_grad_norm": 1.0,
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "lr_scheduler_type": "constant",
    "logging_steps": 10,
    "save_total_limit": 2,
}
#: TrainingArguments fields the training command sets itself (see `training._training_arguments`)
FIXED_TRAINING_KEYS = frozenset({
    "output_dir", "eval_strategy", "save_strategy", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "remove_unused_columns", "label_names", "use_cpu",
})  # fmt: skip
SELECTION_METRICS = {"mmimdb": "macro_f1"}  # every other dataset: accuracy
#: keys of a run config (or a config.json) that are neither FLI2MoEConfig arguments nor read by it
_NOT_MODEL_KEYS = frozenset({"architectures", "auto_map", "model_type", "transformers_version", "dataset", "training"})


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as JSON when it parses, else the string)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value (e.g. training.num_train_epochs=3)")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


@dataclass
class RunConfig:
    """A run config: the model's config and the two sections only the training command reads."""

    model: FLI2MoEConfig
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As a run config file holds it: the model's fields, plus `dataset` and `training`."""
        return {**self.model.to_dict(), "dataset": dict(self.dataset), "training": dict(self.training)}


def load_run_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run config (JSON), apply `key=value` overrides (`hidden_size=64`, `training.seed=1`,
    `dataset.data_dir=...`), and validate every key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; the shipped ones are in hub_configs/")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    for item in overrides:
        keys, value = parse_override(item)
        target = data
        for k in keys[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise ValueError(f"override {item!r}: {k!r} is not a section of the config")
        target[keys[-1]] = value
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build and validate a run config; unknown keys raise, naming the known ones."""
    import inspect

    allowed = set(inspect.signature(FLI2MoEConfig.__init__).parameters) - {"self", "kwargs"}
    allowed |= _CONFIG_EXTRA_KEYS | {"dataset", "training"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{source}: unknown config key(s) {unknown}. Known keys: {sorted(allowed - _CONFIG_EXTRA_KEYS)} "
            "(plus num_labels, id2label, problem_type). Fix the spelling or remove them."
        )
    training = data.get("training") or {}
    known_training = {f.name for f in dataclasses.fields(TrainingArguments)}
    bad = sorted(set(training) - known_training)
    if bad:
        raise ValueError(
            f"{source}: unknown training key(s) {bad}; the training section takes transformers.TrainingArguments "
            "fields (e.g. num_train_epochs, learning_rate, per_device_train_batch_size, seed)."
        )
    fixed = sorted(set(training) & FIXED_TRAINING_KEYS)
    if fixed:
        raise ValueError(
            f"{source}: training key(s) {fixed} are set by the training command itself (it evaluates and saves every "
            "epoch and keeps the best checkpoint by dataset.selection_metric); remove them from the training section"
        )
    check_training_values(training, source)
    dataset = data.get("dataset") or {}
    bad = sorted(set(dataset) - {"name", "loader", "data_dir", "options", "selection_metric", "cache_dir"})
    if bad:
        raise ValueError(
            f"{source}: unknown dataset key(s) {bad}; known: name, loader, data_dir, options, selection_metric, cache_dir"
        )
    if dataset.get("options") is not None and not isinstance(dataset["options"], dict):
        raise ValueError(f"{source}: dataset.options must be a mapping of loader keyword arguments, got {dataset['options']!r}")
    if dataset.get("loader"):
        check_loader_options(dataset["loader"], dataset.get("options") or {}, source)
    return RunConfig(model=model_config(data), dataset=dict(dataset), training=dict(training))


def model_config(data: dict[str, Any]) -> FLI2MoEConfig:
    """The model's config from a run config dict (or a `config.json`), its run sections and bookkeeping left out."""
    return FLI2MoEConfig(**{k: v for k, v in data.items() if k not in _NOT_MODEL_KEYS})


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The plain Python types a TrainingArguments field accepts, from its annotation (None: not checked)."""
    import types
    import typing

    simple = {bool: (bool,), int: (int,), float: (int, float), str: (str,), type(None): (type(None),),
              list: (list,), dict: (dict, str)}  # fmt: skip
    if annotation in simple:
        return simple[annotation]
    origin = typing.get_origin(annotation)
    if origin in simple:  # list[str], dict[str, Any]
        return simple[origin]
    if origin not in (typing.Union, types.UnionType):
        if isinstance(annotation, type) and issubclass(annotation, str):
            return (str,)  # str enums (IntervalStrategy, SchedulerType, ...)
        return None
    out: list[type] = []
    for arg in typing.get_args(annotation):
        kinds = _accepted_types(arg)
        if kinds is None:
            return None
        out += [k for k in kinds if k not in out]
    return tuple(out)


def check_training_values(training: dict[str, Any], source: str = "config") -> None:
    """Type-check the training section against TrainingArguments' field types (e.g. `max_steps=two` is refused
    here, naming the field, instead of failing deep inside Trainer)."""
    fields = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    for key, value in training.items():
        if key not in fields or (key == "bf16" and value == "auto"):
            continue  # unknown keys are reported by config_from_dict; bf16 "auto": on where it is fast
        kinds = _accepted_types(fields[key].type)
        if kinds is None:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            default = fields[key].default
            raise ValueError(
                f"{source}: training.{key} must be {names} (TrainingArguments default {default!r}), got {value!r}; "
                f"e.g. training.{key}={json.dumps(TRAINING_DEFAULTS.get(key, default), default=str)}"
            )
        if key in ("num_train_epochs", "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size") \
                and value <= 0:
            raise ValueError(f"{source}: training.{key} must be > 0, got {value!r}")
        if key == "seed" and value < 0:
            raise ValueError(f"{source}: training.seed must be an int >= 0, got {value!r}")


def check_loader_options(loader_name: str, options: dict[str, Any], source: str = "config") -> None:
    """Refuse loader options the loader does not take (a misspelt `on_eror`), naming the allowed ones."""
    import difflib
    import inspect

    from .data import get_loader

    params = inspect.signature(get_loader(loader_name)).parameters
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and n != "root")]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{source}: dataset.options.{key} is not an option of the {loader_name!r} loader.{hint} "
                f"Allowed options: {allowed}."
            )


def selection_metric(run: RunConfig) -> str:
    """The validation metric that picks the best checkpoint: `dataset.selection_metric`, else the dataset's own."""
    ds = run.dataset
    return ds.get("selection_metric") or SELECTION_METRICS.get(ds.get("name", ""), "accuracy")


__all__ = [
    "FIXED_TRAINING_KEYS",
    "SELECTION_METRICS",
    "TRAINING_DEFAULTS",
    "RunConfig",
    "check_loader_options",
    "check_training_values",
    "config_from_dict",
    "load_run_config",
    "model_config",
    "parse_override",
    "selection_metric",
]
