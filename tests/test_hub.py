"""Model card generation and checkpoint pushing, with HfApi patched at its commit boundary (no network)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

from modeling_fli2moe.configuration_fli2moe import FLI2MoEConfig
from modeling_fli2moe.hub import IGNORE_PATTERNS, check_checkpoint_dir, checkpoint_files, push_checkpoint
from modeling_fli2moe.model_card import make_model_card, write_model_card

AUTO_MAP = {
    "AutoConfig": "configuration_fli2moe.FLI2MoEConfig",
    "AutoModel": "modeling_fli2moe.FLI2MoEModel",
}
CONFIG = {
    "model_type": "fl_i2moe",
    "auto_map": AUTO_MAP,
    "modalities": [
        {"name": "text", "input_dim": 32, "max_tokens": 16,
         "encoder": {"type": "hf-text", "name_or_path": "roberta-base"}},
        {"name": "image", "input_dim": 48, "max_tokens": 49,
         "encoder": {"type": "hf-vision", "name_or_path": "openai/clip-vit-base-patch16"}},
    ],
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "mixture": "interaction",
    "interaction_loss_weight": 0.5,
    "fill": "noise",
    "problem_type": "multi_label_classification",
    "id2label": {"0": "Drama", "1": "Comedy", "2": "Romance"},
}
TEST_METRICS = {
    "test_loss": 0.31,
    "test_micro_f1": 0.66,
    "test_macro_f1": 0.61,
    "test_weighted_f1": 0.64,
    "test_samples_f1": 0.65,
    "test_roc_auc": 0.87,
    "test_roc_auc_micro": float("nan"),
    "test_roc_auc_labels_skipped": 1,
    "test_runtime": 2.5,
    "test_samples_per_second": 100.0,
    "epoch": 3.0,
}
PUSHED = {
    "config.json", "model.safetensors", "README.md", "configuration_fli2moe.py", "modeling_fli2moe.py",
    "fli2moe_processor.json", "test_results.json",
}
NOT_PUSHED = {
    "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "trainer_state.json", "training_args.bin",
    "checkpoint-10/model.safetensors", "checkpoint-10/optimizer.pt", "runs/Jan01/events.out.tfevents.1",
}


def _tiny_safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A fake checkpoint folder with the file names a real one has (no model import needed)."""
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(CONFIG))
    (root / "test_results.json").write_text(json.dumps({"test_macro_f1": 0.5, "test_accuracy": 0.9}))
    for name in PUSHED | NOT_PUSHED:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".safetensors"):
            _tiny_safetensors(path)  # pushing checks the weights' framing
        elif not path.exists():
            path.write_bytes(b"# placeholder\n" if name.endswith(".py") else b"\0fake")
    (root / "README.md").unlink()
    write_model_card(root, config=CONFIG, test_metrics=TEST_METRICS, dataset_name="mmimdb", repo_id="me/fli2moe")
    return root


# ---------------------------------------------------------------------------------------------- model card
def test_card_yaml_and_model_index(checkpoint: Path):
    card = ModelCard.load(checkpoint / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    for tag in ("fl-i2moe", "multimodal", "mixture-of-experts", "interpretability", "custom_code"):
        assert tag in data["tags"]
    assert data["datasets"] == ["mmimdb"]
    assert data["base_model"] == ["roberta-base", "openai/clip-vit-base-patch16"]
    assert data["pipeline_tag"] == "text-classification"
    (entry,) = data["model-index"]
    assert entry["name"] == "fli2moe"
    (result,) = entry["results"]
    assert result["dataset"] == {"name": "MM-IMDb", "type": "mmimdb", "split": "test"}
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values == {
        "F1 (micro)": 0.66, "F1 (macro)": 0.61, "F1 (weighted)": 0.64, "F1 (samples)": 0.65, "ROC-AUC (macro)": 0.87
    }  # no loss, runtime, counts or NaN in the model-index
    # the raw YAML block parses on its own too
    raw = (checkpoint / "README.md").read_text().split("---")[1]
    assert yaml.safe_load(raw)["model-index"][0]["results"][0]["metrics"][1]["args"] == {"average": "macro"}
    # eval results round-trip through huggingface_hub
    assert {r.metric_value for r in card.data.eval_results} == {0.66, 0.61, 0.64, 0.65, 0.87}


def test_card_body_sections(checkpoint: Path):
    text = ModelCard.load(checkpoint / "README.md").text
    for heading in ("## Model description", "## Usage", "## Training data", "## Training procedure",
                    "## Evaluation", "## Limitations", "## Citation"):
        assert heading in text
    for expert in ("uniqueness_text", "uniqueness_image", "synergy", "redundancy", "router"):
        assert expert in text
    assert 'AutoModel.from_pretrained("me/fli2moe", trust_remote_code=True)' in text
    assert "from modeling_fli2moe.explain import Explainer" in text
    assert 'example = {"text": "a short example text", "image": "image.png"}' in text
    assert "explainer.explain(explainer.prepare(example), random_state=0)" in text  # runs in tests/test_snippets.py
    assert "| macro_f1 | 0.6100 |" in text and "| roc_auc_micro | n/a |" in text
    assert "test_runtime" not in text and "samples_per_second" not in text
    # both papers as BibTeX
    assert "@article{" in text and "arXiv:2603.13326" in text and "Feature-level Interaction Explanations" in text
    assert "@inproceedings{" in text and "I2MoE}: Interpretable Multimodal Interaction-aware" in text
    assert "ICML" in text and "2025" in text and "Goebel" in text


def test_card_from_config_object_and_defaults(checkpoint: Path):
    cfg = FLI2MoEConfig(
        modalities=[
            {"name": "screenshot", "input_dim": 16, "encoder": {"type": "hf-vision", "name_or_path": str(checkpoint)}},
            {"name": "wireframe", "input_dim": 16},
        ],
        mixture="dense",
        num_labels=3,
        problem_type="single_label_classification",
    )
    card = make_model_card(checkpoint, config=cfg, test_metrics=None, dataset_name="enrico",
                           training_args={"learning_rate": 1e-4, "seed": 0})
    data = card.data.to_dict()
    assert "base_model" not in data  # a local encoder path is not a Hub id
    assert data["pipeline_tag"] == "image-classification" and "dense-baseline" in data["tags"]
    metrics = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"f1": 0.5, "accuracy": 0.9}  # read from the checkpoint's test_results.json
    assert "dense baseline" in card.text and "| learning_rate | 0.0001 |" in card.text
    assert "uniqueness_" not in card.text


def test_card_reads_config_json_and_explicit_base_models(checkpoint: Path):
    card = make_model_card(checkpoint, test_metrics={}, dataset_name="custom", base_models=["org/encoder"])
    data = card.data.to_dict()
    assert data["base_model"] == ["org/encoder"] and "model-index" not in data
    assert "_None recorded._" in card.text
    with pytest.raises(ValueError, match="dataset_name"):
        make_model_card(checkpoint, config=CONFIG, test_metrics=None, dataset_name="")


# ---------------------------------------------------------------------------------------------------- push
def _commit_info(repo_id: str = "me/fli2moe") -> CommitInfo:
    return CommitInfo(
        commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
        commit_message="Upload FL-I2MoE checkpoint",
        commit_description="",
        oid="abc123",
    )


def test_push_uploads_checkpoint_files_only(checkpoint: Path):
    with (
        mock.patch.object(HfApi, "create_repo", return_value=RepoUrl("https://huggingface.co/me/fli2moe")) as repo,
        mock.patch.object(HfApi, "create_commit", return_value=_commit_info()) as commit,
    ):
        url = push_checkpoint(checkpoint, "me/fli2moe", private=True, token="hf_dummy", commit_message="first")
    assert url == "https://huggingface.co/me/fli2moe/commit/abc123"
    repo.assert_called_once()
    assert repo.call_args.args == ("me/fli2moe",)
    assert repo.call_args.kwargs["exist_ok"] is True and repo.call_args.kwargs["private"] is True
    commit.assert_called_once()
    kwargs = commit.call_args.kwargs
    assert kwargs["repo_id"] == "me/fli2moe" and kwargs["commit_message"] == "first"
    uploaded = {op.path_in_repo for op in kwargs["operations"]}
    assert uploaded == PUSHED
    assert not uploaded & NOT_PUSHED
    assert uploaded == set(checkpoint_files(checkpoint))
    # each operation points at the file on disk
    op = next(op for op in kwargs["operations"] if op.path_in_repo == "model.safetensors")
    assert Path(op.path_or_fileobj) == (checkpoint / "model.safetensors").resolve()


def test_push_with_given_api(checkpoint: Path):
    api = mock.create_autospec(HfApi, instance=True)
    api.create_commit.return_value = _commit_info()
    assert push_checkpoint(checkpoint, "me/fli2moe", api=api, token="hf_x") == _commit_info().commit_url
    assert api.create_repo.call_args.kwargs == {
        "token": "hf_x", "private": False, "exist_ok": True, "repo_type": "model"
    }
    kwargs = api.create_commit.call_args.kwargs
    assert kwargs["repo_type"] == "model" and kwargs["token"] == "hf_x"
    assert {op.path_in_repo for op in kwargs["operations"]} == PUSHED


def test_ignore_patterns_cover_trainer_outputs(tmp_path: Path):
    for name in NOT_PUSHED | {".git/HEAD", "sub/runs/x", "__pycache__/m.cpython-311.pyc"}:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_files(tmp_path) == ["config.json"]
    assert "checkpoint-*" in IGNORE_PATTERNS


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("model.safetensors", "no weights file model.safetensors.*save_pretrained"),
        ("README.md", "README.md .*missing.*write_model_card"),
        ("modeling_fli2moe.py", "remote-code file modeling_fli2moe.py .*auto_map"),
        ("config.json", "has no config.json"),
    ],
)
def test_push_validation_errors(checkpoint: Path, remove: str, message: str):
    (checkpoint / remove).unlink()
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(FileNotFoundError, match=message):
        push_checkpoint(checkpoint, "me/fli2moe", api=api)
    api.create_repo.assert_not_called()
    api.create_commit.assert_not_called()


def test_validation_names_every_problem(checkpoint: Path):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "README.md").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError) as err:
        check_checkpoint_dir(checkpoint)
    assert "model.safetensors" in str(err.value) and "README.md" in str(err.value)
    assert "found ['pytorch_model.bin']" in str(err.value)  # the weights saved as a pickle; not training_args.bin


def test_validation_without_auto_map_and_bad_inputs(checkpoint: Path, tmp_path: Path):
    config = dict(CONFIG)
    del config["auto_map"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no auto_map.*trust_remote_code"):
        check_checkpoint_dir(checkpoint)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_checkpoint_dir(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="repo_id"):
        push_checkpoint(checkpoint, "not a/valid//id", api=mock.create_autospec(HfApi, instance=True))


def test_validation_accepts_sharded_weights_and_lists_files(checkpoint: Path):
    assert set(check_checkpoint_dir(checkpoint)) == {
        "config.json", "model.safetensors", "README.md", "configuration_fli2moe.py", "modeling_fli2moe.py"
    }
    (checkpoint / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    _tiny_safetensors(checkpoint / "model-00001-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        check_checkpoint_dir(checkpoint)
    _tiny_safetensors(checkpoint / "model-00002-of-00002.safetensors")
    assert "model-00002-of-00002.safetensors" in check_checkpoint_dir(checkpoint)


def test_nan_never_reaches_model_index():
    card = make_model_card(None, config=CONFIG, test_metrics={"test_roc_auc": math.nan}, dataset_name="mmimdb")
    assert "model-index" not in card.data.to_dict()
