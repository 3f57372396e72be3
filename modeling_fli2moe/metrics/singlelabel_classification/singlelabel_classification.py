"""Single-label classification metrics: accuracy, macro-F1 and ROC-AUC (binary or one-vs-rest macro)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

_DESCRIPTION = """Accuracy and macro-F1 of the arg-max class, and ROC-AUC on class probabilities: binary on the
positive class, multi-class one-vs-rest macro over the classes present in the references."""
_KWARGS = """Args:
    predictions: (N, C) probabilities or logits (`from_logits=True` applies a softmax). references: (N,) class ids.
Returns: accuracy, macro_f1, roc_auc, roc_auc_classes_skipped."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class SinglelabelClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, from_logits=False):
        scores = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or scores.shape[0] != refs.shape[0]:
            raise ValueError(f"predictions must be (N, C) and references (N,), got {scores.shape} and {refs.shape}")
        if from_logits:
            z = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
        else:
            probs = scores
        preds = probs.argmax(axis=1)
        out = {"accuracy": float(accuracy_score(refs, preds)),
               "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=0))}
        n_classes = probs.shape[1]
        present = [c for c in range(n_classes) if 0 < (refs == c).sum() < len(refs)]
        if n_classes == 2:
            out["roc_auc"] = float(roc_auc_score(refs, probs[:, 1])) if len(present) == 2 else float("nan")
        else:
            aucs = [roc_auc_score((refs == c).astype(int), probs[:, c]) for c in present]
            out["roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
        out["roc_auc_classes_skipped"] = int(n_classes - len(present)) if n_classes > 2 else int(len(present) < 2)
        return out
