"""The shipped evaluate metric modules against sklearn, their edge cases, offline loading and Trainer use."""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from transformers import EvalPrediction

from modeling_fli2moe.metrics import AVAILABLE_METRICS, METRICS_DIR, load_metric, make_compute_metrics, metric_path

ROOT = Path(__file__).resolve().parent.parent


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def multilabel():
    return load_metric("multilabel_f1")


@pytest.fixture(scope="module")
def singlelabel():
    return load_metric("singlelabel_classification")


@pytest.fixture(scope="module")
def ml_data() -> tuple[np.ndarray, np.ndarray]:
    """Fixed (40, 5) logits and multi-hot references; every label has both classes."""
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, size=(40, 5))
    refs[0], refs[1] = 1, 0  # both classes in every column
    logits = rng.normal(size=(40, 5)) + 1.5 * (refs - 0.5)
    return logits, refs


# ---------------------------------------------------------------------------------------------- multi-label
def test_multilabel_matches_sklearn(multilabel, ml_data):
    logits, refs = ml_data
    probs = _sigmoid(logits)
    out = multilabel.compute(predictions=probs, references=refs)
    preds = (probs >= 0.5).astype(int)
    for average in ("micro", "macro", "weighted", "samples"):
        assert out[f"{average}_f1"] == pytest.approx(f1_score(refs, preds, average=average, zero_division=0))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs, probs, average="macro"))
    assert out["roc_auc_micro"] == pytest.approx(roc_auc_score(refs, probs, average="micro"))
    assert out["roc_auc_labels_scored"] == 5 and out["roc_auc_labels_skipped"] == 0


def test_multilabel_logits_flag_equals_probabilities(multilabel, ml_data):
    logits, refs = ml_data
    from_logits = multilabel.compute(predictions=logits, references=refs, from_logits=True)
    from_probs = multilabel.compute(predictions=_sigmoid(logits), references=refs)
    assert from_logits == pytest.approx(from_probs)


def test_multilabel_skips_single_class_label(multilabel, ml_data):
    logits, refs = ml_data
    refs = refs.copy()
    refs[:, 2] = 0  # label 2: no positive reference
    refs[:, 4] = 1  # label 4: no negative reference
    probs = _sigmoid(logits)
    out = multilabel.compute(predictions=probs, references=refs)
    kept = [0, 1, 3]
    assert out["roc_auc_labels_skipped"] == 2 and out["roc_auc_labels_scored"] == 3
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs[:, kept], probs[:, kept], average="macro"))
    assert out["roc_auc"] > 0.5  # scored, not a hard-coded 0
    assert out["macro_f1"] == pytest.approx(f1_score(refs, probs >= 0.5, average="macro", zero_division=0))


def test_multilabel_all_negative_predictions(multilabel, ml_data):
    logits, refs = ml_data
    probs = _sigmoid(logits) * 0.4  # every probability below 0.5: nothing predicted, the ranking kept
    out = multilabel.compute(predictions=probs, references=refs)
    for average in ("micro", "macro", "weighted", "samples"):
        assert out[f"{average}_f1"] == 0.0
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs, probs, average="macro"))


def test_multilabel_no_scorable_label_is_nan(multilabel):
    out = multilabel.compute(predictions=[[0.2, 0.9], [0.7, 0.1]], references=[[0, 1], [0, 1]])
    assert np.isnan(out["roc_auc"]) and out["roc_auc_labels_skipped"] == 2
    assert out["micro_f1"] == pytest.approx(f1_score([[0, 1], [0, 1]], [[0, 1], [1, 0]], average="micro"))


def test_multilabel_threshold(multilabel, ml_data):
    logits, refs = ml_data
    probs = _sigmoid(logits)
    out = multilabel.compute(predictions=probs, references=refs, threshold=0.7)
    assert out["macro_f1"] == pytest.approx(f1_score(refs, probs >= 0.7, average="macro", zero_division=0))


def test_multilabel_input_errors(multilabel, ml_data):
    logits, refs = ml_data
    with pytest.raises(ValueError, match="from_logits=True"):
        multilabel.compute(predictions=logits, references=refs)
    with pytest.raises(ValueError, match="same shape"):
        multilabel.compute(predictions=_sigmoid(logits)[:, :3], references=refs)
    with pytest.raises(ValueError, match="multi-hot"):
        multilabel.compute(predictions=_sigmoid(logits), references=refs * 2)


# --------------------------------------------------------------------------------------------- single-label
def test_singlelabel_multiclass_matches_sklearn(singlelabel):
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 4, size=60)
    refs[:4] = [0, 1, 2, 3]
    logits = rng.normal(size=(60, 4)) + 2.0 * np.eye(4)[refs]
    out = singlelabel.compute(predictions=logits, references=refs, from_logits=True)
    probs = _softmax(logits)
    preds = probs.argmax(1)
    assert out["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert out["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs, probs, multi_class="ovr", average="macro"))
    assert out["roc_auc_classes_skipped"] == 0 and "f1" not in out
    assert singlelabel.compute(predictions=probs, references=refs) == pytest.approx(out)


def test_singlelabel_skips_absent_class(singlelabel):
    rng = np.random.default_rng(2)
    refs = rng.integers(0, 3, size=50)  # class 3 never appears in the references
    refs[:3] = [0, 1, 2]
    logits = rng.normal(size=(50, 4))
    out = singlelabel.compute(predictions=logits, references=refs, from_logits=True)
    probs = _softmax(logits)
    expected = np.mean([roc_auc_score(refs == c, probs[:, c]) for c in range(3)])
    assert out["roc_auc"] == pytest.approx(expected)
    assert out["roc_auc_classes_skipped"] == 1 and out["roc_auc_classes_scored"] == 3


def test_singlelabel_binary_uses_positive_probability(singlelabel):
    rng = np.random.default_rng(3)
    refs = rng.integers(0, 2, size=40)
    logits = rng.normal(size=(40, 2)) + np.eye(2)[refs]
    out = singlelabel.compute(predictions=logits, references=refs, from_logits=True)
    probs = _softmax(logits)
    preds = probs.argmax(1)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs, probs[:, 1]))
    assert out["f1"] == pytest.approx(f1_score(refs, preds))
    assert out["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    # one positive-class logit column gives the same numbers
    single = singlelabel.compute(predictions=(logits[:, 1] - logits[:, 0])[:, None], references=refs, from_logits=True)
    assert single == pytest.approx(out)


def test_singlelabel_binary_one_class_and_all_negative(singlelabel):
    out = singlelabel.compute(predictions=[[0.9, 0.1]] * 4, references=[0, 0, 0, 0])
    assert np.isnan(out["roc_auc"]) and out["accuracy"] == 1.0
    out = singlelabel.compute(predictions=[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]], references=[1, 0, 1])
    assert out["f1"] == 0.0 and out["roc_auc"] == pytest.approx(roc_auc_score([1, 0, 1], [0.1, 0.2, 0.4]))


def test_singlelabel_class_id_predictions(singlelabel):
    out = singlelabel.compute(predictions=[0, 2, 1, 1], references=[0, 2, 2, 1])
    assert out["accuracy"] == 0.75 and "roc_auc" not in out
    assert out["macro_f1"] == pytest.approx(f1_score([0, 2, 2, 1], [0, 2, 1, 1], average="macro"))


def test_singlelabel_input_errors(singlelabel):
    with pytest.raises(ValueError, match="from_logits=True"):
        singlelabel.compute(predictions=[[2.0, -1.0], [0.0, 3.0]], references=[0, 1])
    with pytest.raises(ValueError, match="columns"):
        singlelabel.compute(predictions=[[0.5, 0.5], [0.5, 0.5]], references=[0, 2])


# -------------------------------------------------------------------------------------- Trainer integration
def test_compute_metrics_multilabel_tuple_predictions(ml_data):
    logits, refs = ml_data
    b, c = logits.shape
    extra = (np.zeros((b, 4, c)), np.full((b, 4), 0.25))  # expert_logits (B, E, C), expert_weights (B, E)
    compute = make_compute_metrics("multi_label_classification")
    out = compute(EvalPrediction(predictions=(logits, *extra), label_ids=refs.astype(np.float32)))
    preds = logits > 0
    assert out["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro", zero_division=0))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(refs, logits, average="macro"))
    assert all(isinstance(v, (int, float)) for v in out.values())


def test_compute_metrics_singlelabel_ignores_minus_100():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(30, 3))
    refs = rng.integers(0, 3, size=30)
    refs[:3] = [0, 1, 2]
    refs[-2:] = -100
    compute = make_compute_metrics("single_label_classification")
    out = compute(EvalPrediction(predictions=(logits, np.zeros((30, 5, 3))), label_ids=refs))
    keep = refs != -100
    assert out["accuracy"] == pytest.approx(accuracy_score(refs[keep], logits[keep].argmax(1)))
    assert out["roc_auc"] == pytest.approx(
        roc_auc_score(refs[keep], _softmax(logits[keep]), multi_class="ovr", average="macro")
    )


def test_compute_metrics_unknown_problem_type():
    with pytest.raises(ValueError, match="problem_type"):
        make_compute_metrics("regression")


# ------------------------------------------------------------------------------------------------- loading
def test_loads_offline_from_local_paths():
    import evaluate

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    for name in AVAILABLE_METRICS:
        assert metric_path(name).is_file()
        module = evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)  # the folder works too
        assert module.name == name
    with pytest.raises(ValueError, match="ships"):
        load_metric("f1")


def test_metric_scripts_are_package_data():
    """pyproject's package-data must cover the scripts, or a non-editable install loses them."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["modeling_fli2moe"]
    pkg = METRICS_DIR.parent
    for name in AVAILABLE_METRICS:
        rel = metric_path(name).relative_to(pkg).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} not covered by package-data {patterns}"
        assert not (METRICS_DIR / name / "__init__.py").exists()  # a script folder, not a package
