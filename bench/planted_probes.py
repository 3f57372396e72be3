"""Do the explanations find what was planted? The Explainer at its defaults on a planted checkpoint.

Runs on either benchmark with recorded truth: the planted one (a `save_planted` folder) or the
tagged-photos one (an MMHS150K-layout folder written by `make_tagged_photos`, read by the MMHS150K loader;
picked when the data folder holds `tagged_photos_truth.json`).

For the synergy and redundancy examples of the planted test split (and the uniqueness kinds for the
experts' own-modality share), with `Explainer` at its shipped defaults unless a flag changes one:

- top-SII pair = the planted (word, region within one cell) pair, in the synergy examples that carry it
  (both presence-coded cues present: half of the synergy examples);
- top-RG pair = the planted pair, in the redundancy examples that carry it (half of them);
- candidate recall: the planted word / region among the candidate players;
- masking the top-1 pair by SII / by RG against random pairs (paired Wilcoxon), in the score's own kind
  (SII: synergy examples, RG: redundancy examples) and over both kinds together;
- own-modality attribution share of each uniqueness expert (all kinds, and its own kind);
- prior gap: |p(target) with the true pair masked - the kind's training label rate of the target class|,
  mean per kind (an absence the model reads as "unknown" moves the prediction to its prior: gap near 0);
- the occlusion check: masking the planted pair drops p(target) by >= 0.1 (the model uses it), and
  the hit rates restricted to the examples where it holds; and the stricter check that masking each
  planted token *alone* moves p(target) by >= 0.1 (the model needs both: otherwise a synergy pair is
  not synergistic in the model), with the SII hit rate where it holds; for redundancy, the model treats the
  pair redundantly where masking the pair moves p(target) by >= 0.1 while masking either token alone does
  not (either cue suffices), with the RG hit rate where it does (a model that reads the label from one cue
  only has no redundant pair to find);
- fidelity (with --reference-budget > 0): the default top SII / RG pair equals the top pair of a
  reference run over *all* cross-modal pairs (screened with shared contexts, the best 32 and the
  default's own top pairs re-estimated at --reference-budget evaluations); strictly, and up to the
  reference's own resolution (the default's pair is within 2 standard errors of the reference's top: a
  reference that cannot tell two pairs apart cannot call either choice wrong), in the score's own kind and
  in both kinds;
- seconds per example at the defaults, and the same for a dense checkpoint side by side
  (concentration and specificity of its maps) with --dense.

    .venv/bin/python bench/planted_probes.py --checkpoint outputs/planted/fl_i2moe --dense outputs/planted/dense --n 45
    .venv/bin/python bench/planted_probes.py --candidates integrated_gradients --players tokens --output logit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OCCLUSION_DROP = 0.1  # p(target) must fall by at least this much when the planted pair is masked


def planted_players(game, row) -> tuple[list[int], list[int]]:
    """Player indices holding the planted word's tokens and the planted region(s)."""
    text = [p for p in game.players_of("text").tolist() if set(game.player_positions[p]) & set(row["text_positions"])]
    image = [p for p in game.players_of("image").tolist() if set(game.player_positions[p]) & set(row["image_regions"])]
    return text, image


def player_pair(pair, game) -> tuple[int, int]:
    """The game's player indices `(i, j)`, i < j, of an `InteractionPair`."""
    index = {(p[0], p[1]): k for k, p in enumerate(game.players)}
    a, b = index[pair.modality_a, pair.position_a], index[pair.modality_b, pair.position_b]
    return min(a, b), max(a, b)


def reference_run(game, budget: int, seed: int, include: list[tuple[int, int]]):
    """SII / RG over *all* cross-modal pairs, independent of the Explainer's candidates: every pair is
    screened with 6 shared contexts (3 antithetic units), then the 16 best pairs by SII, the 16 best by RG
    and the pairs in `include` are re-estimated with `budget` evaluations; the best of those is the
    reference's top pair."""
    from modeling_fli2moe.explain import shapley_interactions
    from modeling_fli2moe.explain.shapley import cross_modal_pairs

    pairs = cross_modal_pairs(game.modality_of_player)
    unit = 2 * (1 + game.n_players + len(pairs))
    screen = shapley_interactions(game, game.n_players, pairs, 3 * unit, random_state=seed, batch_size=512,
                                  border=False)
    keep = np.union1d(np.argsort(-screen.sii)[:16], np.argsort(-screen.redundancy_gap)[:16])
    chosen = np.unique(np.concatenate([pairs[keep], np.asarray(include, dtype=pairs.dtype).reshape(-1, 2)]), axis=0)
    return shapley_interactions(game, game.n_players, chosen, budget, random_state=seed + 1, batch_size=512)


def agrees_with_reference(pair: tuple[int, int], ref, key: str) -> tuple[bool, bool]:
    """(strict, resolved): the default's top pair (player indices) is the reference's top pair by `key`; it
    is that, or its reference value is within 2 standard errors of the top's."""
    values, errors = getattr(ref, key), getattr(ref, f"{key}_se")
    top = int(np.argmax(values))
    got = int(np.flatnonzero((ref.pairs == np.asarray(pair)).all(axis=1))[0])
    return got == top, bool(values[top] - values[got] <= 2 * np.hypot(errors[top], errors[got]))


def run(ckpt: Path, rows_by_kind: dict, args, label: str, rates: dict[str, float]) -> dict:
    from transformers import AutoModel

    import modeling_fli2moe  # noqa: F401
    from modeling_fli2moe.data import is_planted_pair, region_near
    from modeling_fli2moe.explain import Explainer, concentration, paired_test
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    model = AutoModel.from_pretrained(ckpt).eval()
    processor = FLI2MoEProcessor.from_pretrained(ckpt)
    options = {k: v for k, v in (("candidates", args.candidates), ("output", args.output), ("players", args.players),
                                 ("method", args.method)) if v is not None}
    explainer = Explainer(model, processor, **options)
    call = {k: v for k, v in (("budget", args.budget), ("n_candidates", args.n_candidates)) if v is not None}
    hits = {"synergy": [], "redundancy": []}
    hits_used = {"synergy": [], "redundancy": []}
    fidelity = {key: {"strict": [], "resolved": [], "own strict": [], "own resolved": []}
                for key in ("sii", "redundancy_gap")}
    recall = {"text": [], "image": []}
    used: dict[str, list[bool]] = {}
    prior_gap: dict[str, list[float]] = {}
    needs_both: dict[str, list[bool]] = {}
    hits_both: dict[str, list[bool]] = {}
    redundant: list[bool] = []
    hits_redundant: list[bool] = []
    drops = {"sii": ([], []), "redundancy_gap": ([], [])}
    # the score's own kind: the top SII pair in the synergy examples, the top RG pair in the redundancy ones
    own_drops = {"sii": ([], []), "redundancy_gap": ([], [])}
    own_kind = {"sii": "synergy", "redundancy_gap": "redundancy"}
    share = {"all": {}, "own kind": {}}
    conc = {"entropy": [], "top_mass": []}
    seconds, contexts = [], []
    for kind in args.kinds:
        for i, row in enumerate(rows_by_kind[kind]):
            # one prepared example (encoded, checked and projected once) serves the explanation and the checks
            example = explainer.prepare({"text": row["text"], "image": row["image"]})
            t0 = time.perf_counter()
            exp = explainer.explain(example, random_state=i, **call)
            seconds.append(time.perf_counter() - t0)
            contexts.append(exp.n_contexts)
            by_head = {h: {m: torch.tensor(v) for m, v in exp.maps[h].items()} for h in exp.maps}
            c = concentration(by_head["mixture"], example.player_mask)
            conc["entropy"].append(c.entropy["all"])
            conc["top_mass"].append(c.top_mass["all"])
            for head, own in (("uniqueness_text", "text"), ("uniqueness_image", "image")):
                if head not in by_head:
                    continue
                mass = {m: float(by_head[head][m].abs().sum()) for m in by_head[head]}
                total = sum(mass.values())
                if total > 0:
                    share["all"].setdefault(head, []).append(mass[own] / total)
                    if kind == f"unique-{own}":
                        share["own kind"].setdefault(head, []).append(mass[own] / total)
            if kind not in hits:
                continue
            # the model checks remove the tokens the way the explanation does (the Explainer's fill)
            game = example.game_for("mixture", output="probability", fill=explainer.fill)
            text_p, image_p = planted_players(game, row)
            cand = exp.candidate_players
            recall["text"].append(any(p in row["text_positions"] for p in cand.get("text", [])))
            recall["image"].append(any(region_near(p, row["image_regions"]) for p in cand.get("image", [])))
            coalition = torch.ones(1, game.n_players, dtype=torch.bool)
            coalition[0, text_p + image_p] = False
            masked = float(game(coalition)[0])
            holds = bool(text_p and image_p) and game.value_full - masked >= OCCLUSION_DROP
            target = int(game.target[0])
            prior = rates[kind] if target == 1 else 1.0 - rates[kind]
            prior_gap.setdefault(kind, []).append(abs(masked - prior))
            used.setdefault(kind, []).append(holds)
            alone = []
            for players in (text_p, image_p):
                single = torch.ones(1, game.n_players, dtype=torch.bool)
                single[0, players] = False
                alone.append(bool(players) and abs(game.value_full - float(game(single)[0])) >= OCCLUSION_DROP)
            both = all(alone)
            needs_both.setdefault(kind, []).append(both)
            top = exp.synergy_pairs[0] if kind == "synergy" else exp.redundancy_pairs[0]
            hits[kind].append(is_planted_pair(top, row))
            if holds:
                hits_used[kind].append(is_planted_pair(top, row))
            if both:
                hits_both.setdefault(kind, []).append(is_planted_pair(top, row))
            if kind == "redundancy":
                redundant.append(holds and not any(alone))
                if redundant[-1]:
                    hits_redundant.append(is_planted_pair(top, row))
            for key in drops:
                masking = exp.pair_masking.get(key)
                if masking is not None and masking.steps:
                    first = masking.steps[0]
                    drops[key][0].append(first.ranked_drop)
                    drops[key][1].append(first.random_mean)
                    if kind == own_kind[key]:
                        own_drops[key][0].append(first.ranked_drop)
                        own_drops[key][1].append(first.random_mean)
            if args.reference_budget:
                ref_game = example.game_for("mixture", output=explainer.output, autocast_dtype=explainer.autocast_dtype,
                                            fill=explainer.fill)
                tops = {key: player_pair(top_pair, ref_game)
                        for key, top_pair in (("sii", exp.synergy_pairs[0]), ("redundancy_gap", exp.redundancy_pairs[0]))}
                ref = reference_run(ref_game, args.reference_budget, 10_000 + i, list(tops.values()))
                for key, top_pair in tops.items():
                    strict, resolved = agrees_with_reference(top_pair, ref, key)
                    fidelity[key]["strict"].append(strict)
                    fidelity[key]["resolved"].append(resolved)
                    if kind == own_kind[key]:
                        fidelity[key]["own strict"].append(strict)
                        fidelity[key]["own resolved"].append(resolved)
        print(f"  [{label}] {kind}: {len(rows_by_kind[kind])} examples done", flush=True)

    def frac(x):
        return f"{np.mean(x):.2f} (n={len(x)})" if x else "n/a"

    report = {
        "checkpoint": str(ckpt),
        "explainer": {"method": explainer.method, "candidates": explainer.candidates, "output": explainer.output,
                      "players": explainer.players, **call},
        "feature_locality": explainer.feature_locality(),
        "top-SII pair = planted, synergy": frac(hits["synergy"]),
        "top-RG pair = planted, redundancy": frac(hits["redundancy"]),
        "text candidate recall": frac(recall["text"]),
        "image candidate recall": frac(recall["image"]),
        "occlusion check holds (synergy / redundancy)": (frac(used.get("synergy", [])),
                                                         frac(used.get("redundancy", []))),
        "prior gap with the true pair masked (synergy / redundancy)": tuple(
            round(float(np.mean(prior_gap[k])), 3) if prior_gap.get(k) else None for k in ("synergy", "redundancy")),
        "top-SII hit where the check holds": frac(hits_used["synergy"]),
        "top-RG hit where the check holds": frac(hits_used["redundancy"]),
        "each planted token alone moves p(target) >= 0.1 (synergy / redundancy)": (
            frac(needs_both.get("synergy", [])), frac(needs_both.get("redundancy", []))),
        "top-SII hit where each planted token alone matters": frac(hits_both.get("synergy", [])),
        "pair used redundantly (the pair moves p(target) >= 0.1, neither token alone does)": frac(redundant),
        "top-RG hit where the pair is used redundantly": frac(hits_redundant),
        **{f"fidelity top-{name} vs all-pairs reference ({which})": frac(fidelity[key][which])
           for key, name in (("sii", "SII"), ("redundancy_gap", "RG"))
           for which in ("own strict", "own resolved", "strict", "resolved")},
        "own-modality share (all kinds)": {h: round(float(np.mean(v)), 3) for h, v in share["all"].items()},
        "own-modality share (own kind)": {h: round(float(np.mean(v)), 3) for h, v in share["own kind"].items()},
        "mixture map entropy / top-10% mass": (round(float(np.nanmean(conc["entropy"])), 3),
                                               round(float(np.nanmean(conc["top_mass"])), 3)),
        "seconds per example (median, max)": (round(float(np.median(seconds)), 2), round(float(np.max(seconds)), 2)),
        "sampled contexts per pair (min)": int(min(contexts)) if contexts else 0,
    }
    for key, (ranked, random) in own_drops.items():
        test = paired_test(ranked, random) if len(ranked) > 1 else {}
        report[f"masking top-1 by {key}, {own_kind[key]} examples"] = {
            "ranked": round(float(np.mean(ranked)), 4) if ranked else None,
            "random": round(float(np.mean(random)), 4) if random else None, "n": len(ranked),
            "p": test.get("p_value")}
    for key, (ranked, random) in drops.items():
        test = paired_test(ranked, random) if len(ranked) > 1 else {}
        report[f"masking top-1 by {key}"] = {"ranked": round(float(np.mean(ranked)), 4),
                                             "random": round(float(np.mean(random)), 4), "n": len(ranked),
                                             "p": test.get("p_value")}

    def mean(x):
        return float(np.mean(x)) if x else float("nan")

    # the figures the per-seed tables compare with their targets, as numbers
    report["figures"] = {
        "pair matters (synergy)": mean(used.get("synergy", [])),
        "pair matters (redundancy)": mean(used.get("redundancy", [])),
        "top SII = true": mean(hits["synergy"]),
        "top RG = true": mean(hits["redundancy"]),
        "top SII = true where it matters": mean(hits_used["synergy"]),
        "top RG = true where it matters": mean(hits_used["redundancy"]),
        # a synergy pair is synergistic in the model only where it needs both cues: each alone moves p(target)
        "synergy pair needs both cues": mean(needs_both.get("synergy", [])),
        "top SII = true where both are needed": mean(hits_both.get("synergy", [])),
        # likewise a redundancy pair is redundant in the model only where either cue alone suffices
        "redundancy pair used redundantly": mean(redundant),
        "top RG = true where used redundantly": mean(hits_redundant),
        "masking p (SII)": report["masking top-1 by sii, synergy examples"]["p"],
        "masking p (RG)": report["masking top-1 by redundancy_gap, redundancy examples"]["p"],
        "prior gap (synergy)": mean(prior_gap.get("synergy", [])),
        "prior gap (redundancy)": mean(prior_gap.get("redundancy", [])),
        "seconds per example": float(np.median(seconds)) if seconds else float("nan"),
    }
    return report


def load_rows(data_dir: Path, n: int) -> dict:
    """The first `n` test examples per kind with their truth, the kinds present, and each kind's training
    label rate."""
    from modeling_fli2moe.data import load_planted
    from modeling_fli2moe.data.tagged_photos import load_tagged_photos

    load = load_tagged_photos if (data_dir / "tagged_photos_truth.json").is_file() else load_planted
    data = load(data_dir)
    test = data["test"]
    train = data["train"].select_columns(["kind", "label"])
    rates = {k: float(np.mean([r["label"] for r in train if r["kind"] == k])) for k in set(train["kind"])}
    # synergy and redundancy: the examples that carry the true pair (on the planted benchmark, both
    # presence-coded cues; every tagged-photos example carries it)
    pair_kinds = ("synergy", "redundancy")
    rows_by_kind = {k: [r for r in test if r["kind"] == k and (k not in pair_kinds or r["text_positions"] and r["image_regions"])]
                    [:n] for k in ("synergy", "redundancy", "unique-text", "unique-image")}
    return {"rows_by_kind": rows_by_kind, "rates": rates, "kinds": [k for k, v in rows_by_kind.items() if v]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--dense", default=None, help="a dense checkpoint on the same data, side by side")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=40, help="examples per kind")
    parser.add_argument("--budget", type=int, default=None, help="default: the Explainer's")
    parser.add_argument("--n-candidates", type=int, default=None, help="default: the Explainer's")
    parser.add_argument("--method", default=None)
    parser.add_argument("--candidates", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--players", default=None)
    parser.add_argument("--reference-budget", type=int, default=0, help="all-pairs reference budget (0 = skip)")
    parser.add_argument("--kinds", nargs="*", default=["synergy", "redundancy", "unique-text", "unique-image"])
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(2)

    ckpt = Path(args.checkpoint)
    test = load_rows(Path(args.data_dir or ckpt.parent / "data"), args.n)
    rows_by_kind, rates = test["rows_by_kind"], test["rates"]
    args.kinds = [k for k in args.kinds if k in test["kinds"]]
    reports = {"fl_i2moe": run(ckpt, rows_by_kind, args, "fl_i2moe", rates)}
    if args.dense:
        dense_args = argparse.Namespace(**{**vars(args), "reference_budget": 0})
        reports["dense"] = run(Path(args.dense), rows_by_kind, dense_args, "dense", rates)
    for name, report in reports.items():
        print(f"== {name}")
        for key, value in report.items():
            print(f"  {key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1, default=str))


if __name__ == "__main__":
    main()
