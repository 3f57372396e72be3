"""`fli2moe train`: the CLI on a small planted config, resume, 2 processes, push, bad input, bf16."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from modeling_fli2moe.cli import main as cli_main
from modeling_fli2moe.data import make_planted, save_planted
from modeling_fli2moe.hub import push_checkpoint
from modeling_fli2moe.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "hidden_size=16", "router_hidden_size=16", "num_heads=2", "dropout=0.1",
    "training.num_train_epochs=2", "training.per_device_train_batch_size=8", "training.logging_steps=1",
    "training.learning_rate=0.003", "training.save_total_limit=null", "training.bf16=false",
    "training.disable_tqdm=true",
]


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    save_planted(make_planted(n_per_kind=10, random_state=0), root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


def _train(tmp: Path, planted_dir: Path, cache_dir: Path, out: str, *extra: str) -> int:
    return cli_main([
        "train", "--config", str(ROOT / "hub_configs" / "planted.json"), "--data-dir", str(planted_dir),
        "--output-dir", str(tmp / out), "--cache-dir", str(cache_dir), *SMALL, *extra,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, planted_dir, cache_dir):
    tmp = tmp_path_factory.mktemp("runs")
    assert _train(tmp, planted_dir, cache_dir, "full") == 0
    return tmp


def test_train_command_writes_a_complete_checkpoint(trained):
    out = trained / "full"
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "configuration_fli2moe.py", "modeling_fli2moe.py", "README.md",
            "test_results.json"} <= files
    test = json.loads((out / "test_results.json").read_text())
    assert 0.0 <= test["test_accuracy"] <= 1.0 and "test_roc_auc" in test and "test_macro_f1" in test
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "positive"}
    assert "dataset" not in cfg and "training" not in cfg  # the model only; the run's sections are in run.json
    run = json.loads((out / "run.json").read_text())["config"]
    assert run["dataset"]["loader"] == "planted" and run["training"]["num_train_epochs"] == 2
    assert cfg["modalities"][1]["encoder"]["type"] == "efficientnet-lite0"
    means = load_file(out / "model.safetensors")["modality_means.image"]
    assert means.shape == (1280,) and means.abs().sum() > 0  # the dataset-mean token travels with the weights
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] is not None and state["best_model_checkpoint"]
    card = (out / "README.md").read_text()
    assert "model-index" in card and "trust_remote_code=True" in card and "2603.13326" in card


def test_resume_gives_the_same_final_weights(trained, planted_dir, cache_dir):
    full = trained / "full"
    steps = sorted(int(p.name.split("-")[1]) for p in full.glob("checkpoint-*"))
    resumed = trained / "resumed"
    resumed.mkdir()
    shutil.copytree(full / f"checkpoint-{steps[0]}", resumed / f"checkpoint-{steps[0]}")  # "interrupted" after epoch 1
    assert _train(trained, planted_dir, cache_dir, "resumed", "--resume") == 0
    a = load_file(full / f"checkpoint-{steps[-1]}" / "model.safetensors")
    b = load_file(resumed / f"checkpoint-{steps[-1]}" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_second_run_reads_the_feature_cache(trained, planted_dir, cache_dir):
    files = sorted(p.name for p in Path(cache_dir).rglob("*.arrow"))
    assert files
    with mock.patch("modeling_fli2moe.feature_cache.build_encoders", side_effect=AssertionError("re-encoded")), \
         mock.patch("modeling_fli2moe.encoders.build_encoder", side_effect=AssertionError("re-encoded")):
        assert _train(trained, planted_dir, cache_dir, "again", "training.num_train_epochs=1") == 0
    assert sorted(p.name for p in Path(cache_dir).rglob("*.arrow")) == files


def test_two_processes_with_accelerate_launch(tmp_path, planted_dir, cache_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "modeling_fli2moe.cli", "train",
           "--config", str(ROOT / "hub_configs" / "planted.json"), "--data-dir", str(planted_dir),
           "--output-dir", str(tmp_path / "ddp"), "--cache-dir", str(cache_dir), *SMALL, "training.num_train_epochs=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    test = json.loads((tmp_path / "ddp" / "test_results.json").read_text())
    assert "test_accuracy" in test
    state = json.loads((tmp_path / "ddp" / "trainer_state.json").read_text())
    # 28 train examples, 8 per device: 2 processes take 16 per step -> 2 steps (one process would take 4)
    assert state["global_step"] == 2, state["global_step"]


def test_push_uploads_the_checkpoint(trained, tmp_path):
    from huggingface_hub import HfApi

    captured = {}

    def fake_commit(self, repo_id, operations, **kwargs):
        captured["repo_id"] = repo_id
        captured["files"] = sorted(op.path_in_repo for op in operations)
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    with mock.patch.object(HfApi, "create_repo") as create, mock.patch.object(HfApi, "create_commit", fake_commit), \
         mock.patch.object(HfApi, "preupload_lfs_files", lambda *a, **k: None):
        assert cli_main(["push", "--checkpoint", str(trained / "full"), "--repo-id", "me/fl-i2moe-planted"]) == 0
    create.assert_called_once()
    files = captured["files"]
    assert {"config.json", "model.safetensors", "README.md", "configuration_fli2moe.py", "modeling_fli2moe.py"} <= set(files)
    assert not any(f.startswith("checkpoint-") or f.endswith(("optimizer.pt", "rng_state.pth")) for f in files)
    # what was pushed reloads
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for f in files:
        shutil.copy(trained / "full" / f, pushed / f)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(pushed, trust_remote_code=True)
    assert model.config.num_labels == 2
    shutil.rmtree(pushed)
    pushed.mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist|missing"):
        push_checkpoint(tmp_path / "nope", "me/x")


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_reported_before_long_work(tmp_path, planted_dir, cache_dir, capsys):
    cfg = str(ROOT / "hub_configs" / "planted.json")
    assert cli_main(["train", "--config", cfg, "hidden_sise=8"]) == 2
    assert "unknown config key(s) ['hidden_sise']" in capsys.readouterr().err
    assert cli_main(["train", "--config", cfg, "training.epochs=3"]) == 2
    assert "unknown training key(s) ['epochs']" in capsys.readouterr().err
    assert cli_main(["train", "--config", cfg, "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["train", "--config", str(ROOT / "hub_configs" / "mmimdb.json"), "--data-dir", str(planted_dir)]) == 2
    assert "roberta-base" in capsys.readouterr().err  # encoder not installed, said before loading data
    wrong_labels = tmp_path / "labels.json"
    data = json.loads(Path(cfg).read_text())
    data["id2label"] = {"0": "cat", "1": "dog"}
    wrong_labels.write_text(json.dumps(data))
    assert cli_main(["train", "--config", str(wrong_labels), "--data-dir", str(planted_dir), "--cache-dir", str(cache_dir)]) == 2
    assert "do not match the config's id2label" in capsys.readouterr().err


def test_resume_from_an_incompatible_checkpoint_is_refused(trained, planted_dir, cache_dir, capsys):
    code = _train(trained, planted_dir, cache_dir, "full", "hidden_size=32", "--resume")
    assert code == 2
    assert "different model (hidden_size differ)" in capsys.readouterr().err


def test_overrides_and_config_validation():
    run = load_run_config(ROOT / "hub_configs" / "mmimdb.json", ["training.num_train_epochs=3", "dropout=0.25"])
    assert run.training["num_train_epochs"] == 3 and run.model.dropout == 0.25
    assert run.model.num_labels == 23 and run.model.problem_type == "multi_label_classification"
    assert run.dataset == {"name": "mmimdb", "loader": "mmimdb", "data_dir": "data/mmimdb", "selection_metric": "macro_f1"}
    for name in ("mmimdb", "enrico", "mmhs150k", "planted"):
        for suffix in ("", "_dense"):
            c = load_run_config(ROOT / "hub_configs" / f"{name}{suffix}.json")
            assert c.model.mixture == ("dense" if suffix else "interaction")
            # the model config holds the model only: no data folder or training settings in config.json
            saved = c.model.to_dict()
            assert "dataset" not in saved and "training" not in saved and "data_dir" not in json.dumps(saved)
    assert load_run_config(ROOT / "hub_configs" / "enrico.json").model.router_layers == 3


def test_old_config_sections_are_dropped(tmp_path):
    """config.json files of earlier versions carried the run's dataset and training sections: loading one
    keeps the model and drops them, so re-saving (or pushing) it carries no local data folder."""
    from modeling_fli2moe import FLI2MoEConfig

    cfg = FLI2MoEConfig(num_labels=2, dataset={"loader": "planted", "data_dir": "/home/me/data"},
                        training={"seed": 1})  # fmt: skip
    assert not hasattr(cfg, "dataset") and not hasattr(cfg, "training")
    cfg.save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert "/home/me/data" not in text and '"training"' not in text and '"dataset"' not in text


def test_bf16_mixed_precision_trains(tmp_path):
    """bf16 through Trainer's own option (fast on CPUs with AMX and on GPUs; it must train everywhere)."""
    from transformers import Trainer, TrainingArguments

    from modeling_fli2moe import FLI2MoEModel
    from modeling_fli2moe.testing.models import tiny_config

    from .test_trainer_integration import _collate, _random_dataset

    torch.manual_seed(0)
    model = FLI2MoEModel(tiny_config(num_labels=2, dropout=0.0))
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, per_device_train_batch_size=16,
                             num_train_epochs=6, learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[],
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_random_dataset(64, 0), data_collator=_collate)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
