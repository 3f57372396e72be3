"""Our pair-SII estimator against every shapiq approximator of order-2 SII, at equal budget, on games made from
the planted checkpoint whose exact values are known.

Games: each of `--games` planted test examples (synergy and redundancy alternating, each carrying its planted
pair) gives one game: the mixture's log-odds game of the Explainer (bf16 where native), its players grouped to
14: the planted word, the planted region, the five strongest other players of each modality (by occlusion
score) and one "rest" player per modality (every other token of it). All 2**14 coalitions are evaluated once
(the value table), and the exact SII of the 49 cross-modal pairs comes from enumeration.

shapiq runs in its own Python (it needs Python >= 3.12 and is not a dependency of this package: make a venv
with `python3.12 -m venv ENV && ENV/bin/pip install shapiq==1.8.*`, pass `--shapiq-python ENV/bin/python`) on the
same value tables; each approximator sees the table through a lookup, at each budget and seed. Ours runs here on
the same lookup (`PairInteractionApproximator` at its defaults, all 49 pairs).

Printed: RMSE over the 49 pairs against the exact values, mean over games and seeds, per approximator and
budget; for ours also the distinct coalitions evaluated per unit of budget and the fraction of estimates within 2
reported standard errors of the exact value (nominal 0.95).

    .venv/bin/python bench/estimator_vs_shapiq.py --shapiq-python /path/to/shapiq-venv/bin/python
    .venv/bin/python bench/estimator_vs_shapiq.py --shapiq-python ENV/bin/python --seeds 2 --budgets 500 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_fli2moe.explain.shapley import (  # noqa: E402
    PairInteractionApproximator,
    cross_modal_pairs,
    exact_shapley_interactions,
)

N_PLAYERS = 14
OTHERS = 5  # strongest other players per modality

# Runs in shapiq's Python: reads the tables, writes {approximator: {budget: [[estimates of the pairs], ...]}}.
SHAPIQ_SCRIPT = r"""
import json, sys, warnings
import numpy as np
import shapiq

warnings.filterwarnings("ignore")
tables = np.load(sys.argv[1])
spec = json.loads(open(sys.argv[2]).read())
n = spec["n"]
powers = 1 << np.arange(n)
candidates = {
    "PermutationSamplingSII": lambda seed: shapiq.PermutationSamplingSII(n, max_order=2, index="SII", random_state=seed),
    "SHAPIQ": lambda seed: shapiq.SHAPIQ(n, max_order=2, index="SII", random_state=seed),
    "SVARMIQ": lambda seed: shapiq.SVARMIQ(n, max_order=2, index="SII", random_state=seed),
    "KernelSHAPIQ": lambda seed: shapiq.KernelSHAPIQ(n, max_order=2, index="SII", random_state=seed),
    "InconsistentKernelSHAPIQ": lambda seed: shapiq.InconsistentKernelSHAPIQ(n, max_order=2, index="SII", random_state=seed),
    "ProxySHAP": lambda seed: shapiq.ProxySHAP(n, max_order=2, index="SII", random_state=seed),
    "ProxySHAP (adjustment)": lambda seed: shapiq.ProxySHAP(n, max_order=2, index="SII", adjustment=True, random_state=seed),
}
out = {"version": shapiq.__version__, "results": {}, "skipped": {}}
for name, make in candidates.items():
    if spec["only"] and name not in spec["only"]:
        continue
    try:
        make(0)
    except Exception as err:  # an approximator of this version without order-2 SII
        out["skipped"][name] = f"{type(err).__name__}: {err}"
        continue
    per_budget = {}
    for budget in spec["budgets"]:
        runs = []
        for g, pairs in enumerate(spec["pairs"]):
            values = tables[f"game{g}"]
            game = lambda rows, values=values: values[(np.atleast_2d(np.asarray(rows, dtype=bool)) * powers).sum(1)]
            for seed in spec["seeds"]:
                iv = make(seed).approximate(budget, game)
                runs.append([float(iv[(int(i), int(j))]) for i, j in pairs])
        per_budget[str(budget)] = runs
    out["results"][name] = per_budget
    print(name, "done", file=sys.stderr, flush=True)
print("RESULT" + json.dumps(out))
"""


def grouped_games(checkpoint: Path, n_games: int) -> list[dict]:
    """Value tables `(2**14,)` (row r = the coalition with bitmask r), the cross-modal pairs and their exact SII."""
    from modeling_fli2moe import FLI2MoEModel
    from modeling_fli2moe.data import load_planted
    from modeling_fli2moe.explain import Explainer
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    model = FLI2MoEModel.from_pretrained(checkpoint).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(checkpoint))
    test = load_planted(checkpoint.parent / "data")["test"]
    rows = {k: [r for r in test if r["kind"] == k and r["text_positions"] and r["image_regions"]]
            for k in ("synergy", "redundancy")}
    options = {"output": explainer.output, "autocast_dtype": explainer.autocast_dtype}
    games = []
    for g in range(n_games):
        row = rows["synergy" if g % 2 == 0 else "redundancy"][g // 2]
        example = explainer.prepare({"text": row["text"], "image": row["image"]})
        base = example.game_for("mixture", **options)
        score = example.occlusion_effects(base).score
        truth = {"text": set(row["text_positions"]), "image": set(row["image_regions"])}
        groups = {}
        for name in ("text", "image"):
            members = base.players_of(name).tolist()
            planted = [p for p in members if set(base.player_positions[p]) & truth[name]]
            others = sorted((p for p in members if p not in planted), key=lambda p: -float(score[p]))
            groups[name] = [sum((base.player_positions[p] for p in planted), []),
                            *(base.player_positions[p] for p in others[:OTHERS]),
                            sum((base.player_positions[p] for p in others[OTHERS:]), [])]
        game = example.game_for("mixture", groups=groups, **options)
        if game.n_players != N_PLAYERS:
            raise RuntimeError(f"example {g} gives {game.n_players} grouped players, not {N_PLAYERS}")
        masks = np.arange(2**N_PLAYERS)
        bits = torch.from_numpy(((masks[:, None] >> np.arange(N_PLAYERS)) & 1).astype(bool))
        values = game(bits).double().numpy()
        pairs = cross_modal_pairs(game.modality_of_player)
        exact = exact_shapley_interactions(table_game(values), N_PLAYERS, pairs).sii
        games.append({"values": values, "pairs": pairs, "exact": exact, "kind": row["kind"]})
    return games


def table_game(values: np.ndarray):
    """The value function of a table: bool rows `(k, n)` -> `values[bitmask]`."""
    powers = torch.tensor([1 << i for i in range(N_PLAYERS)])

    def game(rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(values[(rows.long() * powers).sum(1).numpy()])

    game.n_players = N_PLAYERS
    return game


def ours(games: list[dict], budgets: list[int], seeds: list[int]) -> dict:
    """RMSE, distinct evaluations per budget and 2-SE coverage of our estimator per budget."""
    out = {}
    for budget in budgets:
        rmse, distinct, covered = [], [], []
        for game in games:
            for seed in seeds:
                result = PairInteractionApproximator(N_PLAYERS, game["pairs"], random_state=seed).approximate(
                    budget, table_game(game["values"]))
                err = result.sii - game["exact"]
                rmse.append(float(np.sqrt(np.mean(err**2))))
                distinct.append(result.evaluations / budget)
                covered.append(np.abs(err) <= 2 * result.sii_se + 1e-12)
        out[budget] = {"rmse": float(np.mean(rmse)), "distinct": float(np.mean(distinct)),
                       "cover2": float(np.mean(np.concatenate(covered)))}
    return out


def shapiq_rmse(games: list[dict], budgets: list[int], seeds: list[int], python: str, only: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "tables.npz", **{f"game{g}": game["values"] for g, game in enumerate(games)})
        spec = {"n": N_PLAYERS, "budgets": budgets, "seeds": seeds, "only": only,
                "pairs": [game["pairs"].tolist() for game in games]}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        (Path(tmp) / "run.py").write_text(SHAPIQ_SCRIPT)
        done = subprocess.run([python, str(Path(tmp) / "run.py"), str(Path(tmp) / "tables.npz"),
                               str(Path(tmp) / "spec.json")], capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
    if done.returncode or not lines:
        raise RuntimeError(f"shapiq run failed:\n{done.stderr[-3000:]}")
    raw = json.loads(lines[-1][len("RESULT"):])
    exact = [game["exact"] for game in games for _ in seeds]
    table = {name: {int(b): float(np.mean([np.sqrt(np.mean((np.asarray(r) - e) ** 2)) for r, e in zip(runs, exact)]))
                    for b, runs in per_budget.items()}
             for name, per_budget in raw["results"].items()}
    return {"version": raw["version"], "rmse": table, "skipped": raw["skipped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--games", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000])
    parser.add_argument("--shapiq-python", default=None, help="a Python with shapiq installed (>= 3.12)")
    parser.add_argument("--only", nargs="*", default=[], help="shapiq approximators to run (default: all)")
    args = parser.parse_args()
    games = grouped_games(Path(args.checkpoint), args.games)
    seeds = list(range(args.seeds))
    print(f"{len(games)} games ({', '.join(g['kind'] for g in games)}), {N_PLAYERS} players, "
          f"{len(games[0]['pairs'])} cross-modal pairs, {len(seeds)} seeds; exact |SII| mean "
          f"{np.mean([np.abs(g['exact']).mean() for g in games]):.4f}, max {max(np.abs(g['exact']).max() for g in games):.3f}")
    mine = ours(games, args.budgets, seeds)
    rows = {"ours (PairInteractionApproximator)": {b: mine[b]["rmse"] for b in args.budgets}}
    if args.shapiq_python:
        theirs = shapiq_rmse(games, args.budgets, seeds, args.shapiq_python, args.only)
        rows.update({f"shapiq {theirs['version']} {k}": v for k, v in theirs["rmse"].items()})
        short = {f"shapiq {theirs['version']} {k}": k for k in theirs["rmse"]}
        for name, why in theirs["skipped"].items():
            print(f"skipped {name}: {why}")
    print("\nRMSE over the cross-modal pairs against exact SII (mean over games and seeds)")
    print("| approximator | " + " | ".join(f"budget {b}" for b in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    for name, per_budget in rows.items():
        print(f"| {name} | " + " | ".join(f"{per_budget[b]:.4f}" for b in args.budgets) + " |")
    if args.shapiq_python:
        best = {b: min((v[b], k) for k, v in rows.items() if not k.startswith("ours")) for b in args.budgets}
        print("| ours / best shapiq | " + " | ".join(f"{mine[b]['rmse'] / best[b][0]:.2f} ({short[best[b][1]]})"
                                                   for b in args.budgets) + " |")
    print("\nours: distinct coalitions evaluated / budget, and estimates within 2 reported SE of the exact value")
    print("| budget | distinct / budget | within 2 SE |")
    print("|---|---|---|")
    for b in args.budgets:
        print(f"| {b} | {mine[b]['distinct']:.2f} | {mine[b]['cover2']:.3f} |")


if __name__ == "__main__":
    main()
