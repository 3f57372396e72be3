"""Where one explanation's time goes, at the Explainer's defaults: seconds per example split by stage,
coalition evaluations per stage, the game's achieved GFLOP/s against the matmul peak measured in the same
run, and the hit rates beside the times (so that no speed is bought with accuracy unseen).

Stages: encode (`Explainer.prepare`: the processor's frozen encoders and the projection), candidates (the
first-order occlusion effects that pick the candidate players), maps (attribution maps of every head), SII/RG
(the pair approximator), faithfulness (top-K% masking curves of every head's map), pair masking (top pairs
against random pairs), and the rest (the full forward, bookkeeping).

- planted shape: the `make demo` checkpoint on its planted test examples (n per kind that carry the planted
  pair); the hit rate is "the top pair of the example's own kind is the planted pair";
- paper shape: a random-weight model of `hub_configs/mmimdb.json`'s architecture (H = 256, 320 + 196 tokens) on
  random features of the cached sizes, every token a player (no hit rate: nothing is planted).

    .venv/bin/python bench/explain_speed.py [--checkpoint outputs/planted/fl_i2moe] [--n 10] [--paper 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_fli2moe import FLI2MoEModel  # noqa: E402
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

        def counting(game, coalitions):
            clock.evaluations[clock.stage] += int(coalitions.shape[0])
            return logits(game, coalitions)

        patches = [
            (Explainer, "prepare", self.timed("encode", Explainer.prepare)),
            (ExplainedExample, "occlusion_effects", self.timed("candidates", ExplainedExample.occlusion_effects)),
            (explainer_module, "attribute", self.timed("maps", explainer_module.attribute)),
            (PairInteractionApproximator, "approximate", self.timed("SII/RG", PairInteractionApproximator.approximate)),
            (explainer_module, "faithfulness_for_maps", self.timed("faithfulness", explainer_module.faithfulness_for_maps)),
            (explainer_module, "pair_masking_fn", self.timed("pair masking", explainer_module.pair_masking_fn)),
            (FeatureGame, "_logits", counting),
        ]
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


def planted(args, peak: dict[str, float]) -> None:
    from transformers import AutoModel

    from modeling_fli2moe.data import is_planted_pair, load_planted
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").is_file():
        print(f"\nno checkpoint at {ckpt}: run `make demo` first for the planted rows")
        return
    model = AutoModel.from_pretrained(ckpt).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(ckpt))
    test = load_planted(ckpt.parent / "data")["test"]
    rows = []
    for kind in ("synergy", "redundancy"):
        rows += [r for r in test if r["kind"] == kind and r["text_positions"] and r["image_regions"]][: args.n]
    first = rows[0]
    explainer.explain(explainer.prepare({"text": first["text"], "image": first["image"]}), random_state=0)  # warm-up
    clock, seconds, hits, p_values = StageClock(), [], defaultdict(list), defaultdict(list)
    with clock.installed():
        for i, row in enumerate(rows):
            t0 = time.perf_counter()
            exp = explainer.explain(explainer.prepare({"text": row["text"], "image": row["image"]}), random_state=i)
            seconds.append(time.perf_counter() - t0)
            top = exp.synergy_pairs[0] if row["kind"] == "synergy" else exp.redundancy_pairs[0]
            hits[row["kind"]].append(is_planted_pair(top, row))
    precision = "bf16" if explainer.autocast_dtype == torch.bfloat16 else "fp32"
    extra = [f"top {'SII' if k == 'synergy' else 'RG'} pair = planted pair: {sum(v)}/{len(v)} {k} examples"
             for k, v in hits.items()]
    report(f"planted checkpoint {ckpt} (H = {model.config.hidden_size}, {precision}), defaults", seconds, clock,
           len(rows), coalition_gflop(model.config), peak[precision], extra)


def paper(args, peak: dict[str, float]) -> None:
    from modeling_fli2moe.run_config import model_config

    data = json.loads((ROOT / "hub_configs" / "mmimdb.json").read_text())
    config = model_config(data)
    config.dropout = 0.0
    torch.manual_seed(0)
    model = FLI2MoEModel(config).eval()
    g = torch.Generator().manual_seed(0)
    model.set_modality_means({m["name"]: torch.randn(m["input_dim"], generator=g) for m in config.modalities})
    explainer = Explainer(model)
    examples = [{m["name"]: torch.randn(1, m["max_tokens"], m["input_dim"], generator=g) for m in config.modalities}
                for _ in range(args.paper + 1)]
    explainer.explain(explainer.prepare(features=examples[0]), random_state=0)  # warm-up
    clock, seconds = StageClock(), []
    with clock.installed():
        for i, features in enumerate(examples[1:]):
            t0 = time.perf_counter()
            explainer.explain(explainer.prepare(features=features), random_state=i)
            seconds.append(time.perf_counter() - t0)
    precision = "bf16" if explainer.autocast_dtype == torch.bfloat16 else "fp32"
    report(f"paper shape (random weights, mmimdb.json architecture: H = 256, 320 + 196 tokens, {precision}), defaults",
           seconds, clock, len(seconds), coalition_gflop(config), peak[precision], [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--n", type=int, default=10, help="planted examples per kind")
    parser.add_argument("--paper", type=int, default=3, help="paper-shape examples (0: skip)")
    args = parser.parse_args()
    cpu = "AMX" if "amx_tile" in cpu_flags() else ("avx512_bf16" if "avx512_bf16" in cpu_flags() else "no native bf16")
    print(f"CPU threads {torch.get_num_threads()} ({cpu}); explanation precision: "
          f"{'bf16' if autocast_dtype_for('cpu') == torch.bfloat16 else 'fp32'}")
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"measured matmul peak (2048-square): {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} GFLOP/s bf16")
    planted(args, peak)
    if args.paper:
        paper(args, peak)


if __name__ == "__main__":
    main()
