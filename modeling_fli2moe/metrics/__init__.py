"""Metrics as `evaluate` modules shipped inside the package (hub metrics do not load offline).

`load_metric(name)` loads a shipped module from its local path; `make_compute_metrics(problem_type)` gives the
`compute_metrics` callable of `transformers.Trainer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import evaluate
    from transformers import EvalPrediction

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("multilabel_f1", "singlelabel_classification")
METRIC_FOR_PROBLEM = {
    "multi_label_classification": "multilabel_f1",
    "single_label_classification": "singlelabel_classification",
}
IGNORE_INDEX = -100


def metric_path(name: str) -> Path:
    """The script of a shipped metric module: `metrics/<name>/<name>.py` inside the installed package."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"unknown metric {name!r}; the package ships {list(AVAILABLE_METRICS)}")
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"metric script {path} is missing from the installed package; reinstall fl-i2moe (its package-data "
            "must include metrics/*/*.py)"
        )
    return path


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load a shipped metric module by its local path with `evaluate.load` (works with `HF_HUB_OFFLINE=1`).

    `kwargs` go to `evaluate.load`; `keep_in_memory` defaults to `True` (no arrow cache files).
    """
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)


def _first(x: Any) -> Any:
    """The first array of a tuple/list of model outputs (the logits), or `x` itself."""
    return x[0] if isinstance(x, (tuple, list)) else x


def make_compute_metrics(problem_type: str | None, *, threshold: float = 0.5) -> Callable[[EvalPrediction], dict]:
    """`compute_metrics` for `transformers.Trainer`: metrics of the mixture logits (`predictions[0]` of a tuple).

    Multi-label: micro/macro/weighted/samples F1 at `threshold` and ROC-AUC; single-label: accuracy, macro-F1
    (and binary F1) and ROC-AUC. Single-label rows labelled -100 are ignored.
    """
    if problem_type not in METRIC_FOR_PROBLEM:
        raise ValueError(
            f"no metrics for problem_type {problem_type!r}; expected one of {sorted(METRIC_FOR_PROBLEM)} "
            "(set config.problem_type, or let the dataset's labels infer it)"
        )
    metric = load_metric(METRIC_FOR_PROBLEM[problem_type])
    multi_label = problem_type == "multi_label_classification"

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        logits = np.asarray(_first(eval_pred.predictions), dtype=np.float64)
        refs = np.asarray(_first(eval_pred.label_ids))
        if multi_label:
            refs = refs.reshape(logits.shape) if refs.size == logits.size else refs
            if not np.isin(refs, (0, 1)).all():
                raise ValueError(
                    "compute_metrics: multi-label references must be multi-hot 0/1 arrays of shape (N, num_labels), "
                    f"got values {np.unique(refs)[:10].tolist()} with shape {refs.shape}"
                )
            return metric.compute(
                predictions=logits, references=refs.astype(np.int64), from_logits=True, threshold=threshold
            )
        refs = refs.reshape(-1).astype(np.int64)
        keep = refs != IGNORE_INDEX
        if not keep.all():
            logger.info("compute_metrics: ignoring %d rows labelled %d", int((~keep).sum()), IGNORE_INDEX)
        return metric.compute(predictions=logits[keep], references=refs[keep], from_logits=True)

    return compute_metrics


__all__ = ["AVAILABLE_METRICS", "METRIC_FOR_PROBLEM", "load_metric", "make_compute_metrics", "metric_path"]
