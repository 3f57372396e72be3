"""Leakage audit: does a token's evidence stay in that token's feature (local) or leak (contextual)?

1. Cue decodability on the planted benchmark (ground truth known), per feature setting: a 5-fold
   logistic probe reads the unique-text word's bit (sad / happy) from the evidence token's feature and from
   the mean of the *other* caption tokens; the unique-image object's bit (blue square / red triangle) from
   the evidence cell and from the mean of the cells more than one cell away (the kinds whose cue has two
   drawn values).
2. For a checkpoint (--checkpoint, any number): the share of the planted tokens' input-level removal
   effect that survives masking their feature alone (`masking_survival`), and the cost of the
   input-level game against the feature-level game (evaluations per second).

    .venv/bin/python bench/leakage_audit.py --n 160 --checkpoint outputs/planted/fl_i2moe outputs/planted_contextual/fl_i2moe
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def _encoder_specs(run_config: str) -> tuple[dict, dict]:
    """The (text, image) encoder specs of a shipped planted run config: the audit checks what trains."""
    import json

    modalities = json.loads((ROOT / "hub_configs" / run_config).read_text())["modalities"]
    return tuple(m["encoder"] for m in modalities)


SETTINGS = {"contextual": _encoder_specs("planted_contextual.json"), "local": _encoder_specs("planted.json")}


def far_cells(regions: list[int], grid: int = 7) -> list[int]:
    return [c for c in range(grid * grid)
            if all(max(abs(c // grid - r // grid), abs(c % grid - r % grid)) > 1 for r in regions)]


def decodability(text_rows, image_rows, n_folds: int) -> None:
    from modeling_fli2moe.data.planted import EVIDENCE_OBJECTS, EVIDENCE_WORDS
    from modeling_fli2moe.encoders import build_encoder
    from modeling_fli2moe.explain import cue_decodability

    words = [EVIDENCE_WORDS["unique-text"].index(r["evidence_word"]) for r in text_rows]
    objects = [[o.name for o in EVIDENCE_OBJECTS["unique-image"]].index(r["evidence_object"]) for r in image_rows]
    n_rows = len(text_rows) + len(image_rows)
    for name, (text_spec, image_spec) in SETTINGS.items():
        t0 = time.perf_counter()
        text = build_encoder(text_spec).encode([r["text"] for r in text_rows])
        image = build_encoder(image_spec).encode([r["image"] for r in image_rows])
        seconds = time.perf_counter() - t0
        ev_t, ot_t, ev_i, ot_i = [], [], [], []
        for k, r in enumerate(text_rows):
            f, players = text["features"][k], text["player_mask"][k].clone()
            pos = r["text_positions"]
            ev_t.append(f[pos].mean(0))
            players[pos] = False
            ot_t.append(f[players].mean(0))
        for k, r in enumerate(image_rows):
            g = image["features"][k]
            ev_i.append(g[r["image_regions"]].mean(0))
            ot_i.append(g[far_cells(r["image_regions"])].mean(0))
        w = cue_decodability(torch.stack(ev_t), torch.stack(ot_t), words, n_folds, random_state=0)
        o = cue_decodability(torch.stack(ev_i), torch.stack(ot_i), objects, n_folds, random_state=0)
        print(f"  {name:10s} word bit: from the word {w.from_evidence:.2f}, from the other tokens {w.from_others:.2f} | "
              f"object bit: from its cell {o.from_evidence:.2f}, from cells > 1 away {o.from_others:.2f} "
              f"(n = {w.n_examples} / {o.n_examples}, chance {w.chance:.2f}; encoding {n_rows / seconds:.1f} ex/s)", flush=True)


def survival(ckpt: Path, rows, n: int) -> None:
    from transformers import AutoModel

    import modeling_fli2moe  # noqa: F401
    from modeling_fli2moe.explain import ExplainedExample, FeatureGame, InputGame, masking_survival
    from modeling_fli2moe.explain.players import word_groups
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    model = AutoModel.from_pretrained(ckpt).eval()
    processor = FLI2MoEProcessor.from_pretrained(ckpt)
    by_modality: dict[str, list[float]] = {"text": [], "image": []}
    t_in = t_ft = 0.0
    n_in = n_ft = 0
    for r in rows[:n]:
        inputs = {"text": r["text"], "image": r["image"]}
        enc = processor(inputs)
        groups = {"text": word_groups(enc["word_ids"]["text"][0])}
        example = ExplainedExample(model, enc["features"], enc["attention_mask"], enc["player_mask"])
        game = FeatureGame(example, groups=groups)
        planted = [p for p in range(game.n_players)
                   if (game.players[p][0] == "text" and set(game.player_positions[p]) & set(r["text_positions"]))
                   or (game.players[p][0] == "image" and set(game.player_positions[p]) & set(r["image_regions"]))]
        res = masking_survival(model, processor, inputs, players=planted, groups=groups)
        for (mod, _), s in zip(res.players, res.survival):
            if np.isfinite(s):
                by_modality[mod].append(s)
        coalitions = torch.rand(64, game.n_players, generator=torch.Generator().manual_seed(0)) < 0.5
        t0 = time.perf_counter()
        game(coalitions)
        t_ft += time.perf_counter() - t0
        n_ft += 64
        ig = InputGame(model, processor, inputs, groups=groups)
        t0 = time.perf_counter()
        ig(coalitions[:16])
        t_in += time.perf_counter() - t0
        n_in += 16
    print(f"  {ckpt}: evidence effect surviving feature masking (median, IQR): " + "; ".join(
        f"{m} {np.median(v):.2f} [{np.percentile(v, 25):.2f}, {np.percentile(v, 75):.2f}] (n={len(v)})"
        for m, v in by_modality.items() if v))
    print(f"    cost: feature-level game {n_ft / t_ft:.0f} coalitions/s, input-level game {n_in / t_in:.1f} "
          f"coalitions/s ({(n_ft / t_ft) / (n_in / t_in):.0f}x dearer)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=160, help="unique-text and unique-image examples (each) for the probes (0 = skip them)")
    parser.add_argument("--n-survival", type=int, default=20, help="examples per checkpoint for the survival audit")
    parser.add_argument("--checkpoint", nargs="*", default=[])
    parser.add_argument("--data-dir", default=str(ROOT / "outputs" / "planted" / "data"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    from modeling_fli2moe.data import load_planted, make_planted

    data = Path(args.data_dir)
    ds = load_planted(data) if (data / "dataset_dict.json").is_file() else make_planted(300, random_state=0)
    text_rows = [r for r in ds["train"] if r["kind"] == "unique-text" and r["evidence_word"]][: args.n]
    image_rows = [r for r in ds["train"] if r["kind"] == "unique-image" and r["evidence_object"]][: args.n]
    if text_rows and image_rows:
        print(f"1. cue decodability, {len(text_rows)} unique-text and {len(image_rows)} unique-image examples "
              "(5-fold logistic probes)")
        decodability(text_rows, image_rows, 5)
    rows = [r for r in ds["test"] if r["kind"] in ("synergy", "redundancy") and r["text_positions"] and r["image_regions"]]
    for ckpt in args.checkpoint:
        print("2. masking survival of the planted tokens")
        survival(Path(ckpt), rows, args.n_survival)


if __name__ == "__main__":
    main()
