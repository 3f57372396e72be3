"""Multi-label classification metrics: micro, macro, weighted and samples F1 at a threshold, and ROC-AUC.

An `evaluate` metric module shipped inside `modeling_fli2moe` (hub metrics do not load offline). Load it with
`modeling_fli2moe.metrics.load_metric("multilabel_f1")` or `evaluate.load(<path of this file>)`.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

logger = evaluate.logging.get_logger(__name__)

_CITATION = """\
@article{kim2026flinteractions,
  title   = {Feature-level Interaction Explanations in Multimodal Transformers},
  author  = {Kim and Babiker and Kim and Goebel},
  journal = {arXiv preprint arXiv:2603.13326},
  year    = {2026}
}
"""

_DESCRIPTION = """\
Multi-label metrics of MM-IMDb style tasks. A label is predicted when its probability is at least `threshold`
(0.5); `from_logits=True` applies a sigmoid to the predictions first. F1 is reported with the micro, macro,
weighted and samples averages (sklearn's `f1_score`, `zero_division` = 0 by default). ROC-AUC is computed per
label on the probabilities and averaged (macro) over the labels whose references contain both classes; the
other labels are skipped and counted (`roc_auc_labels_skipped`). When no label can be scored, `roc_auc` is NaN
(never 0). `roc_auc_micro` pools every (example, label) pair.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `list` of `float`, shape (N, C)): probabilities in [0, 1], or logits with
        `from_logits=True`.
    references (`list` of `list` of `int`, shape (N, C)): multi-hot targets (0 or 1).
    threshold (`float`, defaults to 0.5): decision threshold on the probabilities.
    from_logits (`bool`, defaults to `False`): the predictions are logits; apply a sigmoid first.
    zero_division (`float`, defaults to 0.0): F1 value where precision and recall are undefined.
Returns:
    micro_f1, macro_f1, weighted_f1, samples_f1 (`float`),
    roc_auc (`float`, macro over scorable labels, NaN when none), roc_auc_micro (`float`, NaN when undefined),
    roc_auc_labels_scored and roc_auc_labels_skipped (`int`).
Examples:
    >>> metric = evaluate.load("modeling_fli2moe/metrics/multilabel_f1")
    >>> metric.compute(predictions=[[0.9, 0.2], [0.1, 0.7]], references=[[1, 0], [0, 1]])["macro_f1"]
    1.0
"""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultilabelF1(evaluate.Metric):
    """Micro / macro / weighted / samples F1 and macro ROC-AUC of multi-label predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html",
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html",
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        threshold: float = 0.5,
        from_logits: bool = False,
        zero_division: float = 0.0,
    ) -> dict:
        scores = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape != refs.shape:
            raise ValueError(
                f"multilabel_f1: predictions and references must both be (N, num_labels) arrays of the same shape, "
                f"got {scores.shape} and {refs.shape}"
            )
        if scores.shape[0] == 0:
            raise ValueError("multilabel_f1: no examples; pass at least one row of predictions and references")
        if not np.isin(refs, (0, 1)).all():
            raise ValueError("multilabel_f1: references must be multi-hot (only 0 and 1); convert the labels first")
        if not np.isfinite(scores).all():
            raise ValueError("multilabel_f1: predictions contain NaN or infinity; check the model outputs")
        if from_logits:
            probs = _sigmoid(scores)
        else:
            if scores.min() < 0.0 or scores.max() > 1.0:
                raise ValueError(
                    f"multilabel_f1: predictions lie outside [0, 1] (min {scores.min():.3g}, max {scores.max():.3g}); "
                    "they look like logits: pass from_logits=True"
                )
            probs = scores
        preds = (probs >= threshold).astype(np.int64)

        out = {
            f"{average}_f1": float(f1_score(refs, preds, average=average, zero_division=zero_division))
            for average in ("micro", "macro", "weighted", "samples")
        }

        positives = refs.sum(axis=0)
        scorable = np.flatnonzero((positives > 0) & (positives < refs.shape[0]))
        skipped = refs.shape[1] - len(scorable)
        if skipped:
            logger.warning(
                f"multilabel_f1: ROC-AUC skips {skipped} of {refs.shape[1]} labels whose references hold only one "
                f"class (label indices {np.setdiff1d(np.arange(refs.shape[1]), scorable).tolist()})"
            )
        if len(scorable):
            out["roc_auc"] = float(np.mean([roc_auc_score(refs[:, c], probs[:, c]) for c in scorable]))
        else:
            out["roc_auc"] = float("nan")
        flat = refs.ravel()
        out["roc_auc_micro"] = float(roc_auc_score(flat, probs.ravel())) if 0 < flat.sum() < flat.size else float("nan")
        out["roc_auc_labels_scored"] = int(len(scorable))
        out["roc_auc_labels_skipped"] = int(skipped)
        return out
