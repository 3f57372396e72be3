"""Fault injection: earlier outputs are never lost or mixed, corruption is detected, bad input is refused
clearly. Real Trainer runs, real files on disk; the faults (a truncated file, a flipped byte, a second
process holding a lock, a full disk while saving) are made by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_fli2moe import FLI2MoEModel
from modeling_fli2moe.cli import main as cli_main
from modeling_fli2moe.integrity import CheckpointError, verify_checkpoint
from modeling_fli2moe.locking import FileLock, LockError
from modeling_fli2moe.run_config import load_run_config
from modeling_fli2moe.testing.fixtures import write_enrico_fixture, write_mmhs150k_fixture, write_mmimdb_fixture
from modeling_fli2moe.testing.models import random_inputs, tiny_config
from modeling_fli2moe.training import run_training

from .test_encoders import tiny_dirs  # noqa: F401  (session fixture: tiny hf models on disk)

ROOT = Path(__file__).resolve().parents[1]


def _tiny_hub_config(name: str, dirs: dict[str, str], tmp: Path, **training) -> Path:
    """A shipped hub config with the tiny offline encoders substituted (labels, loader, columns, problem
    type and selection metric stay as shipped) and a small, fast model."""
    data = json.loads((ROOT / "hub_configs" / f"{name}.json").read_text())
    for m in data["modalities"]:
        if m["encoder"]["type"] == "hf-text":
            m.update(input_dim=32, max_tokens=16, encoder={"type": "hf-text", "name_or_path": dirs["bert"], "max_tokens": 16})
        else:
            m.update(input_dim=32, max_tokens=16, encoder={"type": "hf-vision", "name_or_path": dirs["vit"]})
    data.update(hidden_size=16, router_hidden_size=16, num_heads=2, dropout=0.1)
    data["training"].update(num_train_epochs=2, per_device_train_batch_size=4, per_device_eval_batch_size=8,
                            logging_steps=1, save_total_limit=None, bf16=False, disable_tqdm=True,
                            learning_rate=0.003, **training)  # fmt: skip
    path = tmp / f"{name}-tiny.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def mmimdb(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_mmimdb_fixture(tmp_path_factory.mktemp("raw"), n=20).root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cfg_file(tiny_dirs, tmp_path_factory):  # noqa: F811
    return _tiny_hub_config("mmimdb", tiny_dirs, tmp_path_factory.mktemp("cfg"))


def _train(cfg_file, mmimdb, cache, out, *extra: str) -> int:
    return cli_main(["train", "--config", str(cfg_file), "--data-dir", str(mmimdb), "--output-dir", str(out),
                     "--cache-dir", str(cache), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def finished(cfg_file, mmimdb, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert _train(cfg_file, mmimdb, cache, out) == 0
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))


# ============================================================================ data is never lost or mixed
def test_rerun_into_a_finished_run_is_refused(finished, cfg_file, mmimdb, cache, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    assert _train(cfg_file, mmimdb, cache, finished) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()} == before
    assert json.loads((finished / "run.json").read_text())["status"] == "finished"


def test_overwrite_replaces_the_earlier_run_completely(finished, cfg_file, mmimdb, cache, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    (run / "checkpoint-99").mkdir()  # a checkpoint of the old run that the new one must not inherit
    assert _train(cfg_file, mmimdb, cache, run, "--overwrite", "training.num_train_epochs=1") == 0
    assert _steps(run) == [3]
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 3


def test_non_run_folder_is_refused(cfg_file, mmimdb, cache, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert _train(cfg_file, mmimdb, cache, tmp_path) == 2
    assert "does not hold a training run" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


_HOLD = textwrap.dedent("""
    import sys, time
    from modeling_fli2moe.locking import FileLock
    with FileLock(sys.argv[1], "test"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(lock_path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock_path), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_into_a_locked_output_folder_names_the_holder(cfg_file, mmimdb, cache, tmp_path, capsys):
    out = tmp_path / "busy"
    proc = _holder(out / ".fli2moe.lock", 60)
    try:
        assert _train(cfg_file, mmimdb, cache, out) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {proc.pid}" in err and "-c" in err and "lock file" in err
        assert sorted(os.listdir(out)) == [".fli2moe.lock"]  # nothing written
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / ".fli2moe.lock"
    import socket

    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "old run", "started": 0}))
    with pytest.warns(UserWarning, match=rf"taking over the lock .* pid {dead.pid}.*no longer runs"):
        with FileLock(path, "output folder x") as lock:
            assert lock.held and json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_feature_cache_file_is_locked_while_written(tiny_dirs, mmimdb, tmp_path):  # noqa: F811
    from modeling_fli2moe.data import load_mmimdb
    from modeling_fli2moe.feature_cache import cache_features

    config = load_run_config(_tiny_hub_config("mmimdb", tiny_dirs, tmp_path)).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = load_mmimdb(mmimdb)
    cache_features(raw, config, tmp_path / "c", batch_size=8)
    arrow = sorted((tmp_path / "c").glob("text-*/train-*.arrow"))[0]
    arrow.unlink()  # must be encoded again, while another process "writes" it
    proc = _holder(Path(f"{arrow}.lock"), 60)
    try:
        with pytest.raises(LockError, match=rf"feature cache file .*{arrow.name} is in use by pid {proc.pid}"):
            cache_features(raw, config, tmp_path / "c", batch_size=8, lock_timeout=0.5)
    finally:
        proc.kill()
        proc.wait()
    proc = _holder(Path(f"{arrow}.lock"), 1.0)  # a writer that finishes: we wait for it, then write
    try:
        out = cache_features(raw, config, tmp_path / "c", batch_size=8, lock_timeout=60)
    finally:
        proc.wait()
    assert len(out["train"]) == len(raw["train"]) and arrow.is_file() and not Path(f"{arrow}.lock").exists()


def test_resume_skips_incomplete_checkpoints(finished, cfg_file, mmimdb, cache, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    for name in ("model.safetensors", "run.json", "test_results.json"):
        (run / name).unlink()
    first, last = _steps(run)
    broken = run / f"checkpoint-{last}"  # what a full disk leaves: no trainer_state.json, a cut optimizer.pt
    (broken / "trainer_state.json").unlink()
    opt = broken / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    with pytest.warns(UserWarning, match=rf"skipping incomplete checkpoint .*checkpoint-{last} \(trainer_state.json"):
        assert _train(cfg_file, mmimdb, cache, run, "--resume") == 0
    state = json.loads((run / f"checkpoint-{last}" / "trainer_state.json").read_text())
    assert state["global_step"] == last  # redone from checkpoint-{first}, complete now


def test_explicit_resume_from_an_incomplete_checkpoint_is_refused(finished, cfg_file, mmimdb, cache, tmp_path, capsys):
    run = _copy_run(finished, tmp_path / "run")
    last = _steps(run)[-1]
    opt = run / f"checkpoint-{last}" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    assert _train(cfg_file, mmimdb, cache, run, "--resume", str(run / f"checkpoint-{last}")) == 2
    assert "optimizer.pt is truncated or corrupt" in capsys.readouterr().err


def test_checkpoints_appear_only_when_complete(tmp_path):
    """A save that fails half-way (disk full while writing the optimizer) leaves no `checkpoint-N`."""
    from transformers import Trainer, TrainingArguments

    from modeling_fli2moe.checkpoints import find_resume_checkpoint
    from modeling_fli2moe.training import SafeCheckpointTrainer

    from .test_trainer_integration import _collate, _random_dataset

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=2,
                             save_strategy="epoch", report_to=[], use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False)  # fmt: skip
    trainer = SafeCheckpointTrainer(model=FLI2MoEModel(tiny_config(num_labels=2)), args=args,
                                    train_dataset=_random_dataset(32, 0), data_collator=_collate)  # fmt: skip
    real = Trainer._save_optimizer_and_scheduler
    calls = {"n": 0}

    def full_disk(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(output_dir, "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
            raise OSError(28, "No space left on device")
        return real(self, output_dir)

    Trainer._save_optimizer_and_scheduler = full_disk
    try:
        with pytest.raises(OSError, match="No space left"):
            trainer.train()
    finally:
        Trainer._save_optimizer_and_scheduler = real
    assert _steps(tmp_path) == [2]  # checkpoint-4 was never made visible
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


@pytest.mark.parametrize(
    "override, field",
    [("dropout=0.3", "dropout: 0.1 in the checkpoint, 0.3 now"),
     ("training.learning_rate=0.01", "training.learning_rate: 0.003 in the checkpoint, 0.01 now"),
     ("interaction_loss_weight=2.0", "interaction_loss_weight: 0.5 in the checkpoint, 2.0 now")],
)  # fmt: skip
def test_resume_with_changed_hyperparameters_is_refused(finished, cfg_file, mmimdb, cache, tmp_path, capsys,
                                                        override, field):  # fmt: skip
    run = _copy_run(finished, tmp_path / "run")
    config_before = (run / "config.json").read_text()
    assert _train(cfg_file, mmimdb, cache, run, override, "--resume") == 2
    err = capsys.readouterr().err
    assert "other hyper-parameters" in err and field in err
    assert (run / "config.json").read_text() == config_before


# ================================================================================== corruption is detected
@pytest.fixture
def cached(tiny_dirs, mmimdb, tmp_path):  # noqa: F811
    from modeling_fli2moe.data import load_mmimdb
    from modeling_fli2moe.feature_cache import cache_features

    config = load_run_config(_tiny_hub_config("mmimdb", tiny_dirs, tmp_path)).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = load_mmimdb(mmimdb)
    first = cache_features(raw, config, tmp_path / "c", batch_size=8)
    arrow = sorted((tmp_path / "c").glob("text-*/train-*.arrow"))[0]
    return raw, config, tmp_path / "c", arrow, first["train"][:]["text_features"].clone()


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 64):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "same-size garbage"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(cached, damage):
    from modeling_fli2moe.feature_cache import cache_features

    raw, config, root, arrow, clean = cached
    if damage == "truncated":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])
    elif damage == "zero-byte":
        arrow.write_bytes(b"")
    else:
        _flip_middle(arrow)
    with pytest.warns(UserWarning, match=rf"feature cache file .*{arrow.name} is damaged"):
        again = cache_features(raw, config, root, batch_size=8)
    assert torch.equal(again["train"][:]["text_features"], clean)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact now: read back without a warning
        cache_features(raw, config, root, batch_size=8)


def test_cache_file_without_a_record_is_checked_for_nan(cached):
    from datasets import Dataset

    from modeling_fli2moe.feature_cache import cache_features

    raw, config, root, arrow, clean = cached
    table = Dataset.from_file(str(arrow))
    poisoned = tmp = arrow.with_name("poisoned.arrow")
    table.map(lambda row: {"text_features": np.full_like(np.asarray(row["text_features"], np.float32), np.nan)},
              cache_file_name=str(tmp), features=table.features)  # fmt: skip
    del table
    shutil.move(poisoned, arrow)
    Path(f"{arrow}.json").unlink()  # as written by an older version: no record to compare with
    with pytest.warns(UserWarning, match=rf"{arrow.name} is damaged \(it holds NaN or inf features\)"):
        again = cache_features(raw, config, root, batch_size=8)
    assert torch.equal(again["train"][:]["text_features"], clean)


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = FLI2MoEModel(tiny_config(num_labels=2, num_heads=4)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


@pytest.mark.parametrize(
    "damage, message",
    [("bit flip", r"model.safetensors does not match the checksum recorded"),
     ("truncated", r"model.safetensors is truncated"),
     ("zero-byte", r"model.safetensors is empty \(0 bytes\)"),
     ("no config.json", r"has no config.json"),
     ("empty folder", r"is empty: nothing was saved there"),
     ("num_heads edited", r"config.json does not match the config the weights were saved with \(num_heads: saved 4, now 2\)")],
)  # fmt: skip
def test_broken_checkpoints_are_refused_naming_the_file(saved_model, damage, message):
    from transformers import AutoModel

    _, ckpt = saved_model
    weights = ckpt / "model.safetensors"
    if damage == "bit flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x01  # the right size, one changed bit in a tensor
        weights.write_bytes(bytes(data))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "zero-byte":
        weights.write_bytes(b"")
    elif damage == "no config.json":
        (ckpt / "config.json").unlink()
    elif damage == "empty folder":
        shutil.rmtree(ckpt)
        ckpt.mkdir()
    else:
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["num_heads"] = 2  # the shapes still fit
        (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((CheckpointError, FileNotFoundError), match=message):
        FLI2MoEModel.from_pretrained(ckpt)
    with pytest.raises((CheckpointError, FileNotFoundError), match=message):
        verify_checkpoint(ckpt)
    if damage in ("bit flip", "truncated", "num_heads edited"):  # the package's class behind the Auto classes
        with pytest.raises((CheckpointError, FileNotFoundError), match=message):
            AutoModel.from_pretrained(ckpt)


def test_nonexistent_checkpoint_path_says_so(tmp_path):
    for path in (tmp_path / "no" / "such" / "run", "no-such-folder/fl_i2moe/best", "no-such-folder-xyz"):
        with pytest.raises(FileNotFoundError, match="does not exist|neither a local folder nor in the Hugging Face"):
            FLI2MoEModel.from_pretrained(path)


def test_nan_weights_without_a_checksum_are_refused(saved_model):
    from safetensors.torch import load_file, save_file

    _, ckpt = saved_model
    tensors = load_file(ckpt / "model.safetensors")
    tensors["router.mlp.0.weight"][0, 0] = float("nan")
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    (ckpt / "checksums.json").unlink()
    with pytest.raises(ValueError, match=r"NaN or inf values in \['router.mlp.0.weight'\]"):
        FLI2MoEModel.from_pretrained(ckpt)


def test_push_refuses_a_corrupt_checkpoint(finished, tmp_path):
    from modeling_fli2moe.hub import push_checkpoint

    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("checkpoint-*"))
    _flip_middle(run / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors does not match the checksum"):
        push_checkpoint(run, "me/model", api=object())


def test_run_record_and_lock_are_not_pushed(finished):
    from modeling_fli2moe.hub import checkpoint_files

    files = checkpoint_files(finished)
    assert "checksums.json" in files and "model.safetensors" in files
    assert "run.json" not in files and not any(f.startswith((".tmp-", ".fli2moe")) for f in files)


# ================================================================================ bad input: a clear error
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FLI2MoEModel(tiny_config(num_labels=2)).eval()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_features_name_modality_and_row(model, value):
    feats, masks = random_inputs(model.config, batch_size=4, generator=torch.Generator().manual_seed(0))
    feats["image"][2, 1, 3] = value
    with pytest.raises(ValueError, match=r"features\['image'\] has NaN or inf values in row\(s\) \[2\]"):
        model(feats, masks)


def test_huge_finite_features_whose_sum_overflows_are_accepted(model):
    """The finiteness check sums first: a sum that overflows to inf from finite values is not an error."""
    feats, masks = random_inputs(model.config, batch_size=2, generator=torch.Generator().manual_seed(0))
    feats["image"][:, :2, 0] = torch.finfo(torch.float32).max
    assert not torch.isfinite(feats["image"].sum())
    model(feats, masks)  # no error


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_and_bool_features_are_refused(model, dtype):
    feats, masks = random_inputs(model.config, batch_size=2, generator=torch.Generator().manual_seed(0))
    feats["text"] = feats["text"].round().to(dtype)
    with pytest.raises(TypeError, match=rf"features\['text'\] has dtype {dtype}.*floating point"):
        model(feats, masks)


def test_empty_batch_with_labels_is_refused(model):
    feats = {n: torch.zeros(0, 3, m["input_dim"]) for n, m in zip(model.modality_names, model.config.modalities)}
    with pytest.raises(ValueError, match=r"batch is empty \(B = 0\) but labels were given"):
        model(feats, labels=torch.zeros(0, dtype=torch.long))


def _write_planted(directory: Path, n: int):
    from modeling_fli2moe.data import make_planted, save_planted

    save_planted(make_planted(n_per_kind=10, random_state=0), directory / "planted")
    return type("Written", (), {"root": directory / "planted"})


SHIPPED = sorted(p.stem for p in (ROOT / "hub_configs").glob("*.json"))
WRITERS = {"mmimdb": write_mmimdb_fixture, "enrico": write_enrico_fixture, "mmhs150k": write_mmhs150k_fixture,
           "planted": _write_planted}  # fmt: skip


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_config_trains_on_its_loaders_fixture(name, tiny_dirs, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp(name)
    loader = json.loads((ROOT / "hub_configs" / f"{name}.json").read_text())["dataset"]["loader"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = WRITERS[loader](tmp / "raw", n=20 if loader != "enrico" else 24).root
    config = load_run_config(_tiny_hub_config(name, tiny_dirs, tmp), ["training.num_train_epochs=1"])
    shipped = json.loads((ROOT / "hub_configs" / f"{name}.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_training(config, data_dir=raw, output_dir=tmp / "out", cache_dir=tmp / "cache")
    saved = json.loads((tmp / "out" / "config.json").read_text())
    assert saved["id2label"] == shipped["id2label"]  # the checkpoint's labels are the shipped names
    assert saved["problem_type"] == shipped["problem_type"]
    assert result.test_metrics


def test_dropped_mmimdb_genres_are_a_warning_with_counts(mmimdb):
    from modeling_fli2moe.data import load_mmimdb

    with pytest.warns(UserWarning, match=r"dropped \d+ genre label\(s\) outside the 23 kept genres.*'(News|Reality-TV)': \d+"):
        load_mmimdb(mmimdb)


def test_missing_validation_files_fail_before_training(cfg_file, mmimdb, cache, tmp_path, capsys):
    raw = tmp_path / "mmimdb"
    shutil.copytree(mmimdb, raw)
    for i in json.loads((raw / "split.json").read_text())["dev"]:
        (raw / "dataset" / f"{i}.jpeg").unlink(missing_ok=True)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["train", "--config", str(cfg_file), "--data-dir", str(raw), "--output-dir",
                         str(tmp_path / "out"), "--cache-dir", str(cache)])  # fmt: skip
    assert code == 2
    assert "the 'validation' split is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and time.time() - t0 < 60


def test_misspelt_selection_metric_fails_before_training(cfg_file, mmimdb, cache, tmp_path, capsys):
    assert _train(cfg_file, mmimdb, cache, tmp_path / "out", "dataset.selection_metric=macro-f1") == 2
    err = capsys.readouterr().err
    assert "selection_metric 'macro-f1' is not a metric of this task" in err and "macro_f1" in err


@pytest.mark.parametrize(
    "override, message",
    [("training.max_steps=two", "training.max_steps must be int"),
     ("training.num_train_epochs=-1", "training.num_train_epochs must be > 0"),
     ("training.seed=-1", "training.seed must be an int >= 0"),
     ("training.eval_strategy=steps", "training key(s) ['eval_strategy'] are set by the training command itself"),
     ("dataset.options.on_eror=skip", "dataset.options.on_eror is not an option of the 'mmimdb' loader. Did you mean "
                                      "'on_error'?")],
)  # fmt: skip
def test_bad_config_values_are_named_at_the_boundary(cfg_file, mmimdb, cache, tmp_path, capsys, override, message):
    assert _train(cfg_file, mmimdb, cache, tmp_path / "out", override) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ====================================================================== explanations: values at the boundary
@pytest.fixture(scope="module")
def explainer():
    from modeling_fli2moe.explain import Explainer

    torch.manual_seed(0)
    model = FLI2MoEModel(tiny_config(num_labels=2, dropout=0.5))
    feats, masks = random_inputs(model.config, batch_size=1, tokens={"text": 4, "image": 3}, pad_fraction=0.0,
                                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    return Explainer(model, method="gradient_x_input", candidates="gradient_x_input"), feats, masks


def _explain(explainer, **kw):
    exp, feats, masks = explainer
    example = exp.prepare(features=feats, attention_mask=masks)
    return exp.explain(example, budget=160, faithfulness=False, pair_masking=False, **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n_candidates": 0}, "n_candidates must be a positive int, got 0"),
     ({"n_candidates": -1}, "n_candidates must be a positive int, got -1"),
     ({"top_k": -1}, "top_k must be a positive int, got -1"),
     ({"random_state": -1}, r"random_state \(the seed\) must be an int >= 0")],
)  # fmt: skip
def test_explainer_arguments_are_validated(explainer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _explain(explainer, **{"random_state": 0, **kwargs})


def test_explainer_uses_eval_mode_even_if_the_model_was_switched_to_train(explainer):
    exp = explainer[0]
    reference = _explain(explainer, random_state=0)
    exp.model.train()  # after construction
    try:
        again = _explain(explainer, random_state=0)
        assert exp.model.training  # the caller's mode is restored
    finally:
        exp.model.eval()
    assert again.probabilities == reference.probabilities
    assert [p.sii for p in again.synergy_pairs] == [p.sii for p in reference.synergy_pairs]


def test_dataset_explanation_names_a_missing_or_empty_checkpoint(tmp_path):
    """`fli2moe explain` checks the folder before AutoModel (whose own message does not say what is wrong)."""
    from modeling_fli2moe.dataset_evaluation import run_dataset_explanation
    from modeling_fli2moe.integrity import CheckpointError

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_dataset_explanation(tmp_path / "no_such_run")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises((CheckpointError, FileNotFoundError), match="is empty"):
        run_dataset_explanation(empty)
