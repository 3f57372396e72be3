"""Metrics as `evaluate` modules shipped inside the package (hub metrics do not load offline)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).resolve().parent
METRIC_FOR_PROBLEM = {
    "multi_label_classification": "multilabel_f1",
    "single_label_classification": "singlelabel_classification",
}


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """Load a shipped metric module by its local path with `evaluate.load`."""
    import evaluate

    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {sorted(METRIC_FOR_PROBLEM.values())}")
    return evaluate.load(str(path))


def make_compute_metrics(problem_type: str | None) -> Callable:
    """`compute_metrics` for `transformers.Trainer` (takes the mixture logits, the first prediction)."""
    if problem_type not in METRIC_FOR_PROBLEM:
        raise ValueError(f"no metrics for problem_type {problem_type!r}; known: {sorted(METRIC_FOR_PROBLEM)}")
    metric = load_metric(METRIC_FOR_PROBLEM[problem_type])

    def compute_metrics(eval_pred) -> dict[str, float]:
        preds = eval_pred.predictions
        logits = np.asarray(preds[0] if isinstance(preds, (tuple, list)) else preds)
        refs = np.asarray(eval_pred.label_ids)
        return metric.compute(predictions=logits, references=refs, from_logits=True)

    return compute_metrics
