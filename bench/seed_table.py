"""Per-seed tables: do the explanations hold for every training run, on both benchmarks with recorded truth?

For each training seed: train the shipped run config with `fli2moe train` (one dataset, features cached
once and shared by the seeds), then run `bench/planted_probes.py`'s probes at the Explainer's defaults on
`--n` test examples per kind, and print one row per seed against the targets:

    test accuracy >= 0.95; the true pair matters (masking it moves p(target) by >= 0.1) in >= 0.9 of the
    synergy and of the redundancy examples; top SII = true pair >= 0.9 (synergy); top RG = true pair
    >= 0.9 (redundancy); pair masking p < 1e-3 for SII and RG.

plus the prior gap (|p(target) with the pair masked - the kind's label rate|) and seconds per explanation.

    .venv/bin/python bench/seed_table.py --benchmark planted
    .venv/bin/python bench/seed_table.py --benchmark tagged_photos --seeds 0 1 2 3 4 --json outputs/tp.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# (figure, comparison, threshold)
TARGETS = (
    ("test accuracy", ">=", 0.95),
    ("pair matters (synergy)", ">=", 0.9),
    ("pair matters (redundancy)", ">=", 0.9),
    ("top SII = true", ">=", 0.9),
    ("top RG = true", ">=", 0.9),
    ("masking p (SII)", "<", 1e-3),
    ("masking p (RG)", "<", 1e-3),
)
EXTRA = ("top SII = true where it matters", "top RG = true where it matters", "synergy pair needs both cues",
         "top SII = true where both are needed", "redundancy pair used redundantly",
         "top RG = true where used redundantly", "prior gap (synergy)",
         "prior gap (redundancy)", "seconds per example")
#: benchmark -> (run config, examples per kind)
BENCHMARKS = {"planted": ("planted.json", 300), "tagged_photos": ("tagged_photos.json", 1000)}


def make_data(benchmark: str, data_dir: Path, n_per_kind: int, seed: int) -> None:
    if data_dir.exists():
        print(f"data: reusing {data_dir}")
        return
    if benchmark == "planted":
        from modeling_fli2moe.cli import DEMO_SPLITS
        from modeling_fli2moe.data import make_planted, save_planted

        save_planted(make_planted(n_per_kind=n_per_kind, random_state=seed, split_fractions=DEMO_SPLITS), data_dir)
    else:
        from modeling_fli2moe.data import make_tagged_photos

        make_tagged_photos(data_dir, n_per_kind, random_state=seed)


def met(value: float | None, op: str, threshold: float) -> bool:
    if value is None or value != value:
        return False
    return value >= threshold if op == ">=" else value < threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="planted")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n", type=int, default=40, help="test examples per kind")
    parser.add_argument("--n-per-kind", type=int, default=None, help="dataset size (default: per benchmark)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="default: outputs/seed_table/<benchmark>")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", help="run config overrides key=value, passed to fli2moe train")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from planted_probes import load_rows, run

    config, default_n = BENCHMARKS[args.benchmark]
    work = Path(args.work or ROOT / "outputs" / "seed_table" / args.benchmark)
    data_dir = work / "data"
    make_data(args.benchmark, data_dir, args.n_per_kind or default_n, args.data_seed)
    test = load_rows(data_dir, args.n)
    rows = {}
    for seed in args.seeds:
        ckpt = work / f"seed{seed}"
        if not (ckpt / "test_results.json").is_file():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "modeling_fli2moe.cli", "train", "--config",
                            str(ROOT / "hub_configs" / config), "--data-dir", str(data_dir), "--output-dir", str(ckpt),
                            "--cache-dir", str(work / "cache"), "--overwrite", f"training.seed={seed}", *args.overrides],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        accuracy = json.loads((ckpt / "test_results.json").read_text())["test_accuracy"]
        probe_args = argparse.Namespace(candidates=None, output=None, players=None, method=None, budget=None,
                                        n_candidates=None, reference_budget=0, kinds=test["kinds"])
        report = run(ckpt, test["rows_by_kind"], probe_args, f"seed {seed}", test["rates"])
        rows[seed] = {"test accuracy": accuracy, **report["figures"]}
        print(json.dumps({"seed": seed, **rows[seed]}), flush=True)

    names = [t[0] for t in TARGETS] + list(EXTRA)
    print(f"\n{args.benchmark}: {len(args.seeds)} seeds, n = {args.n} per kind")
    print("| seed | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for seed, row in rows.items():
        cells = []
        for name in names:
            value = row[name]
            text = "n/a" if value is None else (f"{value:.1e}" if "masking p" in name else f"{value:.2f}")
            target = next((t for t in TARGETS if t[0] == name), None)
            cells.append(text + ("" if target is None or met(value, *target[1:]) else " SHORT"))
        print(f"| {seed} | " + " | ".join(cells) + " |")
    short = [(s, t[0]) for s, row in rows.items() for t in TARGETS if not met(row[t[0]], *t[1:])]
    print("all targets met on every seed" if not short else f"SHORT: {short}")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": args.benchmark, "n": args.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
