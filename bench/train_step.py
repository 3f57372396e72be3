"""Training-step time and peak memory: batched FL-I2MoE (fp32, bf16 autocast) vs the sequential version.

Two shapes, B = 32, H = 256, 2 layers, 4 heads, 2 modalities: small (64 text + 49 image tokens) and
paper (320 + 196). Every variant runs in its own subprocess so that its peak resident memory is its
own. Ratios are measured side by side in one run, plus achieved GFLOP/s against this machine's
measured matmul peak, plus a short loss curve fp32 vs bf16.

    .venv/bin/python bench/train_step.py [--steps 3] [--shapes small,paper] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"small": (64, 49), "paper": (320, 196)}
VARIANTS = ("sequential_fp32", "batched_fp32", "batched_bf16")


def _setup(shape: str, device: str):
    import torch

    from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel

    t_text, t_image = SHAPES[shape]
    cfg = FLI2MoEConfig(
        modalities=[
            {"name": "text", "input_dim": 768, "max_tokens": t_text},
            {"name": "image", "input_dim": 768, "max_tokens": t_image},
        ],
        hidden_size=256, num_layers=2, num_heads=4, num_labels=23,
        problem_type="multi_label_classification", dropout=0.5,
    )
    torch.manual_seed(0)
    model = FLI2MoEModel(cfg).to(device).train()
    g = torch.Generator().manual_seed(0)
    b = 32
    feats = {"text": torch.randn(b, t_text, 768, generator=g), "image": torch.randn(b, t_image, 768, generator=g)}
    masks = {"text": torch.ones(b, t_text, dtype=torch.long), "image": torch.ones(b, t_image, dtype=torch.long)}
    masks["text"][:, t_text // 2 :] = 0  # realistic text padding
    labels = (torch.rand(b, 23, generator=g) < 0.2).float()
    feats = {k: v.to(device) for k, v in feats.items()}
    masks = {k: v.to(device) for k, v in masks.items()}
    return cfg, model, feats, masks, labels.to(device)


def train_flops(cfg, t_total: int, b: int = 32) -> float:
    """Approximate FLOPs of one training step (forward x 3) of the experts over all knocked-out copies."""
    h, e, copies = cfg.hidden_size, cfg.num_experts, cfg.num_modalities + 1
    per_layer = 2 * b * t_total * h * (3 * h + h + 2 * cfg.ffn_multiplier * h) + 4 * b * t_total * t_total * h
    return 3.0 * per_layer * cfg.num_layers * e * copies


def run_variant(shape: str, variant: str, steps: int, device: str) -> dict:
    import torch

    from tests.sequential_reference import sequential_forward

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")) if device == "cpu" else torch.get_num_threads())
    cfg, model, feats, masks, labels = _setup(shape, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    use_bf16 = variant.endswith("bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        if variant.startswith("sequential"):
            loss = sequential_forward(model, feats, masks, labels=labels)["loss"]
        else:
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(feats, masks, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    t_total = sum(SHAPES[shape])
    sec = sorted(times)[len(times) // 2]
    return {"shape": shape, "variant": variant, "step_s": sec, "peak_gib": peak, "losses": losses,
            "gflops": train_flops(cfg, t_total) / sec / 1e9}


def loss_curve(steps: int, device: str) -> dict:
    """The same short run (same data, same init) in fp32 and under bf16 autocast."""
    import torch

    curves = {}
    for precision in ("fp32", "bf16"):
        cfg, model, feats, masks, labels = _setup("small", device)
        model.config.dropout = 0.0
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        curve = []
        for i in range(steps):
            opt.zero_grad()
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(feats, masks, labels=labels, generator=torch.Generator(device=device).manual_seed(i)).loss
            loss.backward()
            opt.step()
            curve.append(float(loss))
        curves[precision] = curve
    return curves


def matmul_peak(device: str) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")) if device == "cpu" else torch.get_num_threads())
    n = 2048 if device == "cpu" else 8192
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        out[name] = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--shapes", default="small,paper")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--curve-steps", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        shape, variant = args._child.split(":")
        print(json.dumps(run_variant(shape, variant, args.steps, args.device)))
        return

    peak = matmul_peak(args.device)
    print(f"device {args.device}; measured matmul peak: {peak['fp32']:.2f} TFLOP/s fp32, {peak['bf16']:.2f} TFLOP/s bf16")
    results = []
    for shape in args.shapes.split(","):
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--_child", f"{shape}:{variant}", "--steps", str(args.steps), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{shape:6s} {variant:16s} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            ref = peak["bf16" if variant.endswith("bf16") else "fp32"] * 1e3
            print(f"{shape:6s} {variant:16s} step {r['step_s']:7.3f} s   peak {r['peak_gib']:6.2f} GiB   "
                  f"{r['gflops']:7.1f} GFLOP/s ({100 * r['gflops'] / ref:4.1f}% of measured peak)", flush=True)
    print("\nratios (step time of sequential fp32 / variant):")
    for shape in args.shapes.split(","):
        by = {r["variant"]: r for r in results if r["shape"] == shape}
        if "sequential_fp32" in by:
            for v in ("batched_fp32", "batched_bf16"):
                if v in by:
                    print(f"  {shape:6s} {v:14s} {by['sequential_fp32']['step_s'] / by[v]['step_s']:5.2f}x faster, "
                          f"memory {by[v]['peak_gib'] / by['sequential_fp32']['peak_gib']:4.2f}x of sequential")
    curves = loss_curve(args.curve_steps, args.device)
    diffs = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(curves["fp32"], curves["bf16"])]
    print(f"\nloss curve, small shape, {args.curve_steps} steps, lr 1e-3, no dropout:")
    print("  fp32 " + " ".join(f"{x:.3f}" for x in curves["fp32"]))
    print("  bf16 " + " ".join(f"{x:.3f}" for x in curves["bf16"]))
    print(f"  max relative difference {max(diffs):.3%} (tolerance 5%)")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_tflops": peak, "results": results, "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
