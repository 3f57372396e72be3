"""Is the tagged-photos synergy readable, and from what? Probes on the cached frozen features.

For the synergy examples (label = the caption's subject word names the subject patch), on the features of
`hub_configs/tagged_photos.json`'s encoders (cached like training's): logistic regression and an MLP on
the per-modality mean-pooled features (what a head reading pooled tokens sees) and on the true pair's two
tokens (the word's token and the subject patch's cell: what a model that finds the pair can use); and
identity probes: the word from pooled text, the subject from the pooled image and from its own cell.
A rule that needs the pair is not readable from pooled features; if it is readable from the pair's tokens,
a model that fails it has not learned to find the pair.

    .venv/bin/python bench/tagged_photos_probes.py --data-dir outputs/tagged_photos/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def arrays(cached, raw):
    """(pooled features, true-pair tokens, label, word, subject, pooled image, subject cell) of the synergy rows
    of one split."""
    kind = np.array(raw["kind"])
    s = kind == "synergy"
    tf = torch.as_tensor(np.asarray(cached["text_features"]))[s].float()
    tm = torch.as_tensor(np.asarray(cached["text_mask"]))[s].float()
    im = torch.as_tensor(np.asarray(cached["image_features"]))[s].float()
    tpos = torch.tensor([p[0] for p, k in zip(raw["text_positions"], kind) if k == "synergy"])
    reg = torch.tensor([r[0] for r, k in zip(raw["image_regions"], kind) if k == "synergy"])
    rows = torch.arange(len(tpos))
    pooled = torch.cat([(tf * tm[..., None]).sum(1) / tm.sum(1, keepdim=True), im.mean(1)], 1).numpy()
    pair = torch.cat([tf[rows, tpos], im[rows, reg]], 1).numpy()
    return (pooled, pair, np.array(raw["label"])[s], np.array(raw["word"])[s], np.array(raw["subject"])[s],
            im.mean(1).numpy(), im[rows, reg].numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / "outputs" / "tagged_photos" / "data"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--config", default=str(ROOT / "hub_configs" / "tagged_photos.json"), help="run config")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from modeling_fli2moe.data import load_tagged_photos
    from modeling_fli2moe.feature_cache import cache_features, default_cache_dir
    from modeling_fli2moe.run_config import load_run_config

    run = load_run_config(args.config)
    ds = load_tagged_photos(args.data_dir)
    cached = cache_features(ds, run.model, args.cache_dir or default_cache_dir())
    tr, te = arrays(cached["train"], ds["train"]), arrays(cached["test"], ds["test"])
    print(f"synergy examples: {len(tr[2])} train, {len(te[2])} test")
    print("| features | probe | train accuracy | test accuracy |")
    print("|---|---|---|---|")
    for name, i in (("mean-pooled text + image", 0), ("the true pair's two tokens", 1)):
        for probe in (LogisticRegression(max_iter=3000), MLPClassifier((256,), max_iter=500, random_state=args.seed)):
            probe.fit(tr[i], tr[2])
            print(f"| {name} | {type(probe).__name__} | {probe.score(tr[i], tr[2]):.3f} | {probe.score(te[i], te[2]):.3f} |")
    for name, i, target in (("word from pooled text + image", 0, 3), ("subject from the pooled image", 5, 4),
                            ("subject from its own cell", 6, 4)):
        probe = LogisticRegression(max_iter=3000).fit(tr[i], tr[target])
        print(f"| {name} | identity, LogisticRegression | {probe.score(tr[i], tr[target]):.3f} | "
              f"{probe.score(te[i], te[target]):.3f} |")


if __name__ == "__main__":
    main()
