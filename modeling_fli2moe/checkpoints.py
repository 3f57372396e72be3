"""Output folders and checkpoints: what a training run writes, and where a run starts from.

- The output folder: `locked_output_dir` holds its lock for the run (a second run into it fails, naming this
  one); `prepare_output_dir` refuses a folder holding an earlier run unless the run resumes or overwrites it;
  `write_run_record` keeps `run.json` (command, config, status) beside the checkpoints.
- Resuming: `find_resume_checkpoint` picks the newest complete `checkpoint-N` (`checkpoint_problem` says
  why one is not), and `check_resume` refuses a checkpoint made with another model or other hyper-parameters.
- Starting from a trained checkpoint (`init_from`): `check_init_from` checks before any long work that its
  weights fit the new config, `init_model_from` copies them in.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .configuration_fli2moe import FLI2MoEConfig
from .integrity import ARCHITECTURE_FIELDS, WEIGHT_FIELDS, CheckpointError, verify_checkpoint, write_json_atomic
from .locking import LOCK_FILE, output_lock
from .modeling_fli2moe import FLI2MoEModel
from .run_config import TRAINING_DEFAULTS, RunConfig, model_config
from .run_record import RUN_FILE, read_run_record

logger = logging.getLogger(__name__)

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
_CONFIG_BOOKKEEPING = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype",
                       "model_type", "id2label", "label2id"}  # fmt: skip


def is_main_process() -> bool:
    """The process that owns the output folder (rank 0 under `accelerate launch` / torchrun)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


@contextmanager
def locked_output_dir(output_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the output folder's lock while a run writes into it (a second run into it fails, naming this one);
    a folder the run created and left empty (it failed before writing anything) is removed again."""
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    try:
        with output_lock(output_dir):
            yield output_dir
    finally:
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()


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
    try:
        verify_checkpoint(folder)  # the model's files: config.json, the weights there and intact
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
    data = model_config(raw).to_dict()
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


def check_resume(resume: bool | str, output_dir: Path, config: RunConfig) -> str:
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
    arch = [k for k, _, _ in diffs if k in WEIGHT_FIELDS]
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


# ------------------------------------------------------------------------------ starting from a checkpoint
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
    diffs = {k: (getattr(source, k), getattr(config, k)) for k in ARCHITECTURE_FIELDS if getattr(source, k) != getattr(config, k)}
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


__all__ = [
    "RESUMABLE_TRAINING_KEYS",
    "check_init_from",
    "check_resume",
    "checkpoint_problem",
    "config_differences",
    "find_resume_checkpoint",
    "init_model_from",
    "is_main_process",
    "locked_output_dir",
    "prepare_output_dir",
    "write_run_record",
]

