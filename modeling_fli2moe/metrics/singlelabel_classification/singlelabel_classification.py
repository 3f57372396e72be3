"""Single-label classification metrics: accuracy, macro-F1 and ROC-AUC (binary, or one-vs-rest macro).

An `evaluate` metric module shipped inside `modeling_fli2moe` (hub metrics do not load offline). Load it with
`modeling_fli2moe.metrics.load_metric("singlelabel_classification")` or `evaluate.load(<path of this file>)`.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

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
Single-label metrics of ENRICO / MMHS150K style tasks. `predictions` are class scores of shape (N, C):
probabilities, or logits with `from_logits=True` (a softmax is applied; with C = 1 the single column is the
positive-class logit and a sigmoid is applied). The predicted class is the arg-max (C = 1: probability >= 0.5).
Accuracy and macro-F1 (sklearn's `f1_score(average="macro")`, over the classes present in the references or the
predictions) are always reported; binary tasks also report `f1` of the positive class 1. ROC-AUC: binary on the
positive-class probability; multi-class one-vs-rest, averaged (macro) over the classes that have both positive
and negative references, skipping and counting the others (`roc_auc_classes_skipped`); NaN when nothing can be
scored (never 0). Predictions given as class ids of shape (N,) give accuracy and F1 only.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list` of `list` of `float`, shape (N, C); or `list` of `int`, shape (N,)): class
        probabilities, logits with `from_logits=True`, or predicted class ids.
    references (`list` of `int`, shape (N,)): class ids in [0, C).
    from_logits (`bool`, defaults to `False`): the predictions are logits (softmax, or sigmoid when C = 1).
    zero_division (`float`, defaults to 0.0): F1 value where precision and recall are undefined.
Returns:
    accuracy, macro_f1 (`float`); f1 (`float`, binary tasks only);
    roc_auc (`float`, NaN when undefined), roc_auc_classes_scored, roc_auc_classes_skipped (`int`)
    (score predictions only).
Examples:
    >>> metric = evaluate.load("modeling_fli2moe/metrics/singlelabel_classification")
    >>> metric.compute(predictions=[[0.8, 0.2], [0.3, 0.7]], references=[0, 1])["accuracy"]
    1.0
"""


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SinglelabelClassification(evaluate.Metric):
    """Accuracy, macro-F1 and ROC-AUC of single-label predictions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64")),
                        "references": datasets.Value("int64"),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html",
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html",
            ],
        )

    def _compute(self, predictions, references, from_logits: bool = False, zero_division: float = 0.0) -> dict:
        scores = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        if refs.ndim != 1 or scores.ndim not in (1, 2) or scores.shape[0] != refs.shape[0]:
            raise ValueError(
                "singlelabel_classification: predictions must be (N, num_classes) scores or (N,) class ids and "
                f"references (N,) class ids, got {scores.shape} and {refs.shape}"
            )
        if refs.size == 0:
            raise ValueError("singlelabel_classification: no examples; pass at least one prediction and reference")
        if refs.min() < 0:
            raise ValueError(
                f"singlelabel_classification: references contain {refs.min()}; drop ignored rows (-100) first"
            )

        if scores.ndim == 1:  # class ids: no scores, so no ROC-AUC
            preds = scores.astype(np.int64)
            binary = max(preds.max(), refs.max()) <= 1
            return self._label_metrics(refs, preds, binary, zero_division)

        if not np.isfinite(scores).all():
            raise ValueError("singlelabel_classification: predictions contain NaN or infinity; check the model outputs")
        num_classes = scores.shape[1]
        if num_classes == 1:  # one positive-class score
            pos = 0.5 * (1.0 + np.tanh(0.5 * scores[:, 0])) if from_logits else scores[:, 0]
            probs = np.stack([1.0 - pos, pos], axis=1)
            num_classes = 2
        else:
            probs = _softmax(scores) if from_logits else scores
        if not from_logits and (probs.min() < 0.0 or probs.max() > 1.0):
            raise ValueError(
                f"singlelabel_classification: predictions lie outside [0, 1] (min {scores.min():.3g}, "
                f"max {scores.max():.3g}); they look like logits: pass from_logits=True"
            )
        if refs.max() >= num_classes:
            raise ValueError(
                f"singlelabel_classification: a reference is class {refs.max()} but predictions have only "
                f"{num_classes} columns; pass one score column per class"
            )
        preds = probs.argmax(axis=1)
        out = self._label_metrics(refs, preds, num_classes == 2, zero_division)

        counts = np.bincount(refs, minlength=num_classes)
        scorable = np.flatnonzero((counts > 0) & (counts < refs.size))
        if num_classes == 2:
            # one positive-class AUC: both classes must be present in the references
            ok = len(scorable) == 2
            out["roc_auc"] = float(roc_auc_score(refs, probs[:, 1])) if ok else float("nan")
            out["roc_auc_classes_scored"] = 2 if ok else 0
            out["roc_auc_classes_skipped"] = 0 if ok else 2
            if not ok:
                logger.warning("singlelabel_classification: ROC-AUC undefined, the references hold only one class")
            return out
        skipped = num_classes - len(scorable)
        if skipped:
            logger.warning(
                f"singlelabel_classification: one-vs-rest ROC-AUC skips {skipped} of {num_classes} classes absent "
                f"from the references (or the only class present): "
                f"{np.setdiff1d(np.arange(num_classes), scorable).tolist()}"
            )
        aucs = [roc_auc_score((refs == c).astype(np.int64), probs[:, c]) for c in scorable]
        out["roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
        out["roc_auc_classes_scored"] = int(len(scorable))
        out["roc_auc_classes_skipped"] = int(skipped)
        return out

    @staticmethod
    def _label_metrics(refs: np.ndarray, preds: np.ndarray, binary: bool, zero_division: float) -> dict:
        out = {
            "accuracy": float(accuracy_score(refs, preds)),
            "macro_f1": float(f1_score(refs, preds, average="macro", zero_division=zero_division)),
        }
        if binary:
            out["f1"] = float(
                f1_score(refs, preds, average="binary", pos_label=1, labels=[0, 1], zero_division=zero_division)
            )
        return out
