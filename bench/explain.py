"""Explanation cost, measured side by side in one run.

- the game's coalition throughput against the model's raw batched forward at the same batch size
  (goal >= 0.8x) and against one-at-a-time evaluation (goal >= 20x);
- fp32 against bf16 autocast, and the whole mixture against a single expert;
- the wall time to explain one planted example with the defaults (goal <= 5 s on 2 cores);
- the shape of the reference measurement: 64 + 49 tokens, H = 256 (reference: ~150 coalitions/s).

The estimator's error against shapiq at equal budget is `bench/estimators.py`.

    .venv/bin/python bench/explain.py [--checkpoint outputs/planted/fl_i2moe] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_fli2moe import FLI2MoEModel  # noqa: E402
from modeling_fli2moe.explain import ExplainedExample, Explainer, FeatureGame  # noqa: E402


def tiny_config(dims, hidden_size, router_hidden_size, num_labels):
    """A benchmark config (no dropout); built here so that the benchmark needs no `datasets`."""
    from modeling_fli2moe import FLI2MoEConfig

    return FLI2MoEConfig(modalities=[{"name": "text", "input_dim": dims[0]}, {"name": "image", "input_dim": dims[1]}],
                         hidden_size=hidden_size, router_hidden_size=router_hidden_size, num_labels=num_labels,
                         dropout=0.0)


def timed(fn, repeats: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def has_fast_bf16(device: str) -> bool:
    from modeling_fli2moe.precision import bf16_supported

    return device == "cuda" or bf16_supported()


def throughput(model, t_text: int, t_image: int, batch: int, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    feats = {m["name"]: torch.randn(1, t, m["input_dim"], generator=g).to(device)
             for m, t in zip(cfg.modalities, (t_text, t_image))}
    coalitions = (torch.rand(batch, t_text + t_image, generator=g) < 0.5).to(device)
    rows = {}
    precisions = [("fp32", None)] + ([("bf16", torch.bfloat16)] if has_fast_bf16(device) else [])
    for precision, dtype in precisions:
        example = ExplainedExample(model, feats)
        game = FeatureGame(example, head="mixture", chunk_size=batch, autocast_dtype=dtype)
        expert = FeatureGame(example, head="synergy" if cfg.mixture == "interaction" else 0, chunk_size=batch,
                             autocast_dtype=dtype)
        big = {n: f.expand(batch, -1, -1) for n, f in feats.items()}

        def raw():
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=dtype is not None):
                model(big)

        rows[precision] = (timed(lambda: game(coalitions)), timed(raw), timed(lambda: expert(coalitions)))
    single = timed(lambda: [game(coalitions[i : i + 1]) for i in range(16)], repeats=1) / 16 * batch
    fp_game, fp_raw, fp_expert = rows["fp32"]
    print(f"  {t_text}+{t_image} tokens, H={cfg.hidden_size}, batch {batch}, {cfg.num_experts} experts:")
    print(f"    game fp32 {batch / fp_game:8.1f} coalitions/s; raw forward {batch / fp_raw:8.1f}/s -> ratio {fp_raw / fp_game:.2f}x")
    print(f"    one at a time {batch / single:8.1f}/s -> batched game is {single / fp_game:.1f}x faster")
    print(f"    single expert fp32 {batch / fp_expert:8.1f}/s ({fp_game / fp_expert:.1f}x cheaper than the mixture)")
    if "bf16" in rows:
        bf_game, bf_raw, _ = rows["bf16"]
        print(f"    game bf16 {batch / bf_game:8.1f}/s (bf16/fp32 speed {fp_game / bf_game:.2f}x); raw bf16 {batch / bf_raw:.1f}/s")
    else:
        print("    bf16 skipped: this CPU has neither avx512_bf16 nor AMX, where bf16 matmuls are emulated (slower)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    print(f"device {args.device}, threads {torch.get_num_threads()}, native bf16: {has_fast_bf16(args.device)}")

    print("reference shape (64 text + 49 image tokens, H = 256, 2 layers, 4 heads, random weights):")
    torch.manual_seed(0)
    ref = FLI2MoEModel(tiny_config(dims=(384, 1280), hidden_size=256, router_hidden_size=256, num_labels=2)).to(args.device).eval()
    throughput(ref, 64, 49, args.batch, args.device)
    if args.device == "cuda":
        print("paper shape (320 + 196 tokens):")
        paper = FLI2MoEModel(tiny_config(dims=(768, 768), hidden_size=256, router_hidden_size=256, num_labels=23)).cuda().eval()
        throughput(paper, 320, 196, args.batch, "cuda")

    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").is_file():
        print(f"no checkpoint at {ckpt}: run `make demo` first for the planted wall-time figure")
        return
    from transformers import AutoModel

    from modeling_fli2moe.data import load_planted
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    model = AutoModel.from_pretrained(ckpt).to(args.device).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(ckpt))
    data_dir = ckpt.parent / "data"
    ds = load_planted(data_dir)["test"] if data_dir.is_dir() else None
    row = next(r for r in ds if r["kind"] == "synergy")
    print(f"planted checkpoint {ckpt} (H={model.config.hidden_size}):")
    throughput(model, 16, 49, args.batch, args.device)
    for kwargs, what in (({}, "defaults (attribution, pairs, faithfulness, pair masking)"),
                         ({"faithfulness": False, "pair_masking": False}, "attribution + pairs only")):
        t0 = time.perf_counter()
        example = explainer.prepare({"text": row["text"], "image": row["image"]})
        exp = explainer.explain(example, random_state=0, **kwargs)
        print(f"  explain one planted example, {what}: {time.perf_counter() - t0:.2f} s "
              f"({exp.evaluations} pair evaluations)")


if __name__ == "__main__":
    main()
