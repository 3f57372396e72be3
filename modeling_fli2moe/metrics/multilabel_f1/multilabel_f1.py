"""Multi-label classification metrics: micro, macro, weighted and samples F1 at a threshold, and ROC-AUC."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

_DESCRIPTION = """F1 (micro, macro, weighted, samples) of multi-hot predictions at `threshold` on probabilities
(pass `from_logits=True` for logits), and macro ROC-AUC over the labels whose references contain both classes."""
_KWARGS = """Args:
    predictions: (N, C) probabilities or logits. references: (N, C) multi-hot.
    threshold: decision threshold on probabilities (0.5). from_logits: apply a sigmoid first.
Returns: micro_f1, macro_f1, weighted_f1, samples_f1, roc_auc, roc_auc_labels_skipped."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MultilabelF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Sequence(datasets.Value("int32"))}
            ),
        )

    def _compute(self, predictions, references, threshold=0.5, from_logits=False):
        scores = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        if scores.shape != refs.shape:
            raise ValueError(f"predictions {scores.shape} and references {refs.shape} must have the same (N, C) shape")
        probs = 1.0 / (1.0 + np.exp(-scores)) if from_logits else scores
        preds = (probs >= threshold).astype(np.int64)
        out = {f"{avg}_f1": float(f1_score(refs, preds, average=avg, zero_division=0))
               for avg in ("micro", "macro", "weighted", "samples")}
        both = [c for c in range(refs.shape[1]) if 0 < refs[:, c].sum() < refs.shape[0]]
        out["roc_auc"] = float(np.mean([roc_auc_score(refs[:, c], probs[:, c]) for c in both])) if both else float("nan")
        out["roc_auc_labels_skipped"] = int(refs.shape[1] - len(both))
        return out
