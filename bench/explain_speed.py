"""Where one explanation's time goes, at the Explainer's defaults: seconds per example split by stage,
coalition evaluations per stage, the game's achieved GFLOP/s against the matmul peak measured in the same
run, and the hit rates beside the times (so that no speed is bought with accuracy unseen).

Stages: encode (`Explainer.prepare`: the processor's frozen encoders and the projection), candidates (the
first-order occlusion effects and the effects in half-full contexts that pick the candidate players), maps (attribution maps of every head), SII/RG
(the pair approximator), faithfulness (top-K% masking curves of every head's map), pair masking (top pairs
against random pairs), and the rest (the full forward, bookkeeping).

- planted shape: the `make demo` checkpoint on its planted test examples (n per kind that carry the planted
  pair); the hit rate is "the top pair of the example's own kind is the planted pair";
- paper shape: a random-weight model of `hub_configs/mmimdb.json`'s architecture (H = 256, 320 + 196 tokens) on
  random features of the cached sizes, every token a player (no hit rate: nothing is planted).

With `--baseline REV` (a commit or a checked-out tree of this project), the same examples are explained by that
version's Explainer at its own defaults, in a separate process on a `git worktree` of REV, before and after this
version's run (two rounds; the ratio is of the pooled medians), so the speed-up is measured side by side in one run.

    .venv/bin/python bench/explain_speed.py [--checkpoint outputs/planted/fl_i2moe] [--n 10] [--paper 3]
    .venv/bin/python bench/explain_speed.py --n 40 --paper 1 --baseline 00b8351
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_fli2moe.explain import Explainer, explainer as explainer_module  # noqa: E402
from modeling_fli2moe.explain.game import ExplainedExample, FeatureGame  # noqa: E402
from modeling_fli2moe.explain.shapley import PairInteractionApproximator  # noqa: E402
from modeling_fli2moe.precision import autocast_dtype_for, cpu_flags  # noqa: E402

STAGES = ("encode", "candidates", "maps", "SII/RG", "faithfulness", "pair masking", "rest")


class StageClock:
    """Seconds and coalition evaluations per stage of `Explainer.explain`, by wrapping the functions it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.evaluations: dict[str, int] = defaultdict(int)
        self.stage = "rest"

    def timed(self, stage: str, fn):
        def wrapped(*args, **kwargs):
            outer, self.stage = self.stage, stage
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self.seconds[stage] += elapsed
                if outer != "rest":  # a stage inside another one: counted once, as the inner stage
                    self.seconds[outer] -= elapsed
                self.stage = outer
        return wrapped

    @contextlib.contextmanager
    def installed(self):
        """Wrap the stages' functions for the duration (restored afterwards)."""
        logits = FeatureGame._logits
        clock = self

        def counting(game, coalitions, *heads):  # a pass for several heads counts once: it is one forward
            clock.evaluations[clock.stage] += int(coalitions.shape[0])
            return logits(game, coalitions, *heads)

        patches = [
            (Explainer, "prepare", self.timed("encode", Explainer.prepare)),
            (ExplainedExample, "occlusion_effects", self.timed("candidates", ExplainedExample.occlusion_effects)),
            (explainer_module, "attribute", self.timed("maps", explainer_module.attribute)),
            (PairInteractionApproximator, "approximate", self.timed("SII/RG", PairInteractionApproximator.approximate)),
            (explainer_module, "faithfulness_for_maps", self.timed("faithfulness", explainer_module.faithfulness_for_maps)),
            (explainer_module, "pair_masking_fn", self.timed("pair masking", explainer_module.pair_masking_fn)),
            (FeatureGame, "_logits", counting),
        ]
        if hasattr(explainer_module, "context_effects"):  # the candidates' half-full contexts (newer versions)
            patches.append((explainer_module, "context_effects", self.timed("candidates", explainer_module.context_effects)))
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, fn in patches:
                setattr(owner, name, fn)
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


def coalition_gflop(config) -> float:
    """GFLOP of one whole-mixture coalition (every expert, every layer, every token: projections, attention,
    feed-forward; the padded sequence length as the fast path runs it)."""
    tokens = sum(m.get("max_tokens") or 0 for m in config.modalities)
    t = -(-tokens // 16) * 16
    h, f, e = config.hidden_size, config.ffn_multiplier, config.num_experts
    per_token = 2 * (h * 3 * h + h * h + 2 * h * f * h) + 2 * 2 * t * h
    return e * config.num_layers * t * per_token / 1e9


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def report(title: str, per_example: list[float], clock: StageClock, n_examples: int, gflop: float, peak: float,
           extra: list[str]) -> None:
    median = statistics.median(per_example)
    clock.seconds["rest"] = sum(per_example) - sum(v for k, v in clock.seconds.items() if k != "rest")
    print(f"\n{title}")
    print(f"  seconds per example: median {median:.2f} (min {min(per_example):.2f}, max {max(per_example):.2f}, "
          f"n = {len(per_example)})")
    total = sum(clock.seconds.values())
    game_seconds = sum(clock.seconds[s] for s in STAGES if s not in ("encode",))
    evaluations = sum(clock.evaluations.values())
    print("  | stage | seconds / example | share | coalition evaluations / example |")
    print("  |---|---|---|---|")
    for stage in STAGES:
        s = clock.seconds.get(stage, 0.0) / n_examples
        print(f"  | {stage} | {s:.3f} | {clock.seconds.get(stage, 0.0) / max(total, 1e-9):.0%} | "
              f"{clock.evaluations.get(stage, 0) / n_examples:.0f} |")
    achieved = evaluations * gflop / max(game_seconds, 1e-9)
    print(f"  game: {evaluations / n_examples:.0f} evaluations per example, {gflop * 1e3:.1f} MFLOP each, "
          f"{achieved:.0f} GFLOP/s = {achieved / peak:.0%} of the matmul peak ({peak:.0f} GFLOP/s) in the precision used")
    for line in extra:
        print(f"  {line}")


# The examples of both shapes, built the same way by this version and by a baseline's process (which imports only
# what every version of the package has had: FLI2MoEModel, FLI2MoEConfig, Explainer, the processor, the planted data).
EXAMPLES = r"""
import json, torch
from pathlib import Path


def planted_examples(checkpoint, n):
    from modeling_fli2moe import FLI2MoEModel
    from modeling_fli2moe.data import is_planted_pair, load_planted
    from modeling_fli2moe.explain import Explainer
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    ckpt = Path(checkpoint)
    model = FLI2MoEModel.from_pretrained(ckpt).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(ckpt))
    test = load_planted(ckpt.parent / "data")["test"]
    rows = []
    for kind in ("synergy", "redundancy"):
        rows += [r for r in test if r["kind"] == kind and r["text_positions"] and r["image_regions"]][:n]
    prepare = lambda row: explainer.prepare({"text": row["text"], "image": row["image"]})

    def hit(exp, row):
        top = exp.synergy_pairs[0] if row["kind"] == "synergy" else exp.redundancy_pairs[0]
        return bool(is_planted_pair(top, row))

    return explainer, rows, prepare, hit


def paper_examples(config_dict, n):
    from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel
    from modeling_fli2moe.explain import Explainer

    config = FLI2MoEConfig(**config_dict)
    torch.manual_seed(0)
    model = FLI2MoEModel(config).eval()
    g = torch.Generator().manual_seed(0)
    model.set_modality_means({m["name"]: torch.randn(m["input_dim"], generator=g) for m in config.modalities})
    explainer = Explainer(model)
    rows = [{m["name"]: torch.randn(1, m["max_tokens"], m["input_dim"], generator=g) for m in config.modalities}
            for _ in range(n + 1)][1:]  # the first draw is the warm-up example of earlier versions of this bench
    return explainer, rows, lambda features: explainer.prepare(features=features), None


def explain_all(explainer, rows, prepare, hit, warm_up=True):
    import time
    if warm_up:
        explainer.explain(prepare(rows[0]), random_state=0)
    seconds, hits = [], []
    for i, row in enumerate(rows):
        t0 = time.perf_counter()
        exp = explainer.explain(prepare(row), random_state=i)
        seconds.append(time.perf_counter() - t0)
        if hit is not None:
            hits.append([row["kind"], hit(exp, row)])
    return {"seconds": seconds, "hits": hits}
"""
exec(EXAMPLES)


class Baseline:
    """Another version of this project (a commit, checked out as a temporary `git worktree`, or a folder) that
    explains the same examples in its own Python process."""

    def __init__(self, rev: str) -> None:
        self.rev, self._tmp = rev, None
        if Path(rev).is_dir():
            self.path = Path(rev)
        else:
            self._tmp = tempfile.mkdtemp(prefix="explain-speed-baseline-")
            self.path = Path(self._tmp) / "tree"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(self.path), rev], check=True,
                           capture_output=True)

    def close(self) -> None:
        if self._tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.path)], capture_output=True)

    def run(self, call: str) -> dict:
        code = EXAMPLES + f"\nprint('RESULT' + json.dumps(explain_all(*{call})))\n"
        env = {**os.environ, "PYTHONPATH": str(self.path)}
        done = subprocess.run([sys.executable, "-c", code], cwd=self.path, env=env, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")]
        if done.returncode or not lines:
            raise RuntimeError(f"baseline {self.rev} failed:\n{done.stderr[-3000:]}")
        return json.loads(lines[-1][len("RESULT"):])


def side_by_side(title: str, ours: list[list[float]], theirs: list[list[float]], rev: str) -> None:
    """Per round medians and the ratio of the pooled medians."""
    print(f"\n{title}: this version against {rev}, rounds alternating ({rev} first)")
    print(f"  | round | {rev} median s | this version median s | ratio |")
    print("  |---|---|---|---|")
    for i, (a, b) in enumerate(zip(theirs, ours)):
        print(f"  | {i + 1} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | "
              f"{statistics.median(a) / statistics.median(b):.2f}x |")
    pooled_a, pooled_b = sum(theirs, []), sum(ours, [])
    print(f"  pooled: {statistics.median(pooled_a):.2f} s against {statistics.median(pooled_b):.2f} s per example, "
          f"{statistics.median(pooled_a) / statistics.median(pooled_b):.2f}x faster")


def measured(call: str, shape: str, args, baseline: Baseline | None,
             baseline_call: str | None = None) -> tuple[Any, dict, StageClock, list[float]]:
    """This version's run of `call` under the stage clock, alternating with the baseline's runs (of
    `baseline_call`, default `call`) when given."""
    explainer, rows, prepare, hit = eval(call)
    explainer.explain(prepare(rows[0]), random_state=0)  # warm-up, outside the stage clock
    clock = StageClock()
    ours, theirs, result = [], [], None
    for _ in range(2 if baseline else 1):
        if baseline:
            theirs.append(baseline.run(baseline_call or call)["seconds"])
        with clock.installed() if result is None else contextlib.nullcontext():
            r = explain_all(explainer, rows, prepare, hit, warm_up=False)
        result = result or r
        ours.append(r["seconds"])
    if baseline:
        side_by_side(shape, ours, theirs, baseline.rev)
    return explainer, result, clock, ours[0]


def planted(args, peak: dict[str, float], baseline: Baseline | None) -> None:
    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").is_file():
        print(f"\nno checkpoint at {ckpt}: run `make demo` first for the planted rows")
        return
    theirs = Path(args.baseline_checkpoint or ckpt).resolve()
    explainer, result, clock, seconds = measured(f"planted_examples({str(ckpt.resolve())!r}, {args.n})", "planted", args,
                                                 baseline, f"planted_examples({str(theirs)!r}, {args.n})")
    hits = defaultdict(list)
    for kind, ok in result["hits"]:
        hits[kind].append(ok)
    model = explainer.model
    precision = "bf16" if explainer.autocast_dtype == torch.bfloat16 else "fp32"
    extra = [f"top {'SII' if k == 'synergy' else 'RG'} pair = planted pair: {sum(v)}/{len(v)} {k} examples"
             for k, v in hits.items()]
    report(f"planted checkpoint {ckpt} (H = {model.config.hidden_size}, {precision}), defaults", seconds, clock,
           len(seconds), coalition_gflop(model.config), peak[precision], extra)


def paper(args, peak: dict[str, float], baseline: Baseline | None) -> None:
    from modeling_fli2moe.run_config import model_config

    config = model_config(json.loads((ROOT / "hub_configs" / "mmimdb.json").read_text()))
    config.dropout = 0.0
    call = f"paper_examples({config.to_dict()!r}, {args.paper})"
    explainer, _, clock, seconds = measured(call, "paper shape", args, baseline)
    precision = "bf16" if explainer.autocast_dtype == torch.bfloat16 else "fp32"
    report(f"paper shape (random weights, mmimdb.json architecture: H = 256, 320 + 196 tokens, {precision}), defaults",
           seconds, clock, len(seconds), coalition_gflop(config), peak[precision], [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--n", type=int, default=10, help="planted examples per kind")
    parser.add_argument("--paper", type=int, default=3, help="paper-shape examples (0: skip)")
    parser.add_argument("--baseline", default=None, help="a commit (or a folder) of this project to time side by side")
    parser.add_argument("--baseline-checkpoint", default=None,
                        help="the checkpoint the baseline explains (default: --checkpoint); for a baseline that cannot "
                             "load it, e.g. the same weights with a config field it knows (the planted data must sit "
                             "beside it, in ../data)")
    args = parser.parse_args()
    cpu = "AMX" if "amx_tile" in cpu_flags() else ("avx512_bf16" if "avx512_bf16" in cpu_flags() else "no native bf16")
    print(f"CPU threads {torch.get_num_threads()} ({cpu}); explanation precision: "
          f"{'bf16' if autocast_dtype_for('cpu') == torch.bfloat16 else 'fp32'}")
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"measured matmul peak (2048-square): {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} GFLOP/s bf16")
    baseline = Baseline(args.baseline) if args.baseline else None
    try:
        planted(args, peak, baseline)
        if args.paper:
            paper(args, peak, baseline)
    finally:
        if baseline:
            baseline.close()


if __name__ == "__main__":
    main()
