"""Do the probes find what was planted? (issue 5 item 7) On a checkpoint trained on the planted benchmark:

- SII ranks the planted synergistic (word, region) pair first in synergy examples (region within one cell = hit);
- RG ranks the planted redundant pair first in redundancy examples;
- masking the top pairs by SII / RG drops the target probability more than random pairs (paired Wilcoxon);
- each uniqueness expert's attribution mass on its own modality.

    .venv/bin/python bench/planted_probes.py --checkpoint outputs/planted/fl_i2moe --n 20 [--method integrated_gradients]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def near(region: int, targets: list[int], grid: int = 7) -> bool:
    r, c = divmod(region, grid)
    return any(abs(r - tr) <= 1 and abs(c - tc) <= 1 for tr, tc in (divmod(t, grid) for t in targets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=20, help="examples per kind")
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--method", default="attn_rollout_grad")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from transformers import AutoModel

    import modeling_fli2moe  # noqa: F401
    from modeling_fli2moe.data import load_planted
    from modeling_fli2moe.explain import Explainer, paired_test
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    ckpt = Path(args.checkpoint)
    model = AutoModel.from_pretrained(ckpt).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(ckpt), method=args.method)
    test = load_planted(args.data_dir or ckpt.parent / "data")["test"]
    hits = {"synergy": [], "redundancy": []}
    drops = {"sii": ([], []), "redundancy_gap": ([], [])}
    own_share = {"uniqueness_text": [], "uniqueness_image": []}
    for kind in ("synergy", "redundancy", "unique-text", "unique-image"):
        rows = [r for r in test if r["kind"] == kind][: args.n]
        for i, row in enumerate(rows):
            exp = explainer.explain(inputs={"text": row["text"], "image": row["image"]}, budget=args.budget,
                                    random_state=i, faithfulness=False, pair_masking=kind in ("synergy", "redundancy"))
            for head, own in (("uniqueness_text", "text"), ("uniqueness_image", "image")):
                mass = {m: float(np.sum(np.abs(exp.maps[head][m]))) for m in exp.maps[head]}
                total = sum(mass.values())
                if total > 0:
                    own_share[head].append(mass[own] / total)
            if kind not in hits:
                continue
            top = exp.synergy_pairs[0] if kind == "synergy" else exp.redundancy_pairs[0]
            t_pos, region = (top.position_a, top.position_b) if top.modality_a == "text" else (top.position_b, top.position_a)
            hits[kind].append(t_pos in row["text_positions"] and near(region, row["image_regions"]))
            for key in drops:
                steps = exp.pair_masking[key]["steps"]
                if steps:
                    drops[key][0].append(steps[0]["ranked_drop"])
                    drops[key][1].append(steps[0]["random_mean"])
    print(f"checkpoint {ckpt}, {args.n} examples per kind, budget {args.budget}, maps {args.method}")
    for kind, h in hits.items():
        print(f"  top-{'SII' if kind == 'synergy' else 'RG'} pair is the planted pair: {np.mean(h):.2f} of {len(h)} {kind} examples")
    for key, (ranked, random) in drops.items():
        test_ = paired_test(ranked, random) if len(ranked) > 1 else {}
        print(f"  masking the top-1 pair by {key}: drop {np.mean(ranked):.4f} vs random {np.mean(random):.4f}; {test_}")
    for head, shares in own_share.items():
        print(f"  {head}: mean attribution share on its own modality {np.mean(shares):.2f} (n={len(shares)})")


if __name__ == "__main__":
    main()
