"""FL-I2MoE against the reference implementation (dut0817/FL-I2MoE_Decor), side by side in one run.

Both models: H = 256, 2 layers, 4 heads, 23 labels, dropout 0.5, router 2 layers (tau 2), B = 32,
already-projected 256-d inputs, text lengths uniform in T/2..T, images unpadded. Rows:

- training step (task + interaction losses, backward, Adam) at the small (64 + 49 tokens) and the
  paper shape (320 + 196);
- inference, one batch of 32 in eval mode, both shapes;
- whole-mixture forward at B = 256 in eval mode (= coalitions/s of a feature-level probe), small shape;
- the same 256 coalitions as coalitions of ONE example through `FLI2MoEModel.coalition_logits` (which
  computes the first block's per-token work once for the example's tokens and the fill), against the
  reference's batched forward at B = 256 (it has no faster path for coalitions);
- the explanation game (`FeatureGame`, one example, 256 coalitions) against our raw batched forward, and
  its matmuls and attention timed alone at its shapes (the share of the peak it would reach if every other
  pass over the activations were free);
- peak resident memory of training at the paper shape, one subprocess per side.

The small-shape rows run every side in one process with iterations alternating, so that a busy machine
slows every side alike and the ratios stay fair; the paper-shape training rows run one subprocess per
side, back to back (for their own peak memory). Our model runs in fp32 and in the precision
`bf16_supported()` picks for this machine (bf16 where the CPU has avx512_bf16 or AMX, or on CUDA).
Also printed: the achieved GFLOP/s against the measured matmul peak in both precisions, every row's
spread (fastest and slowest of the timed calls), the load average while each row ran (other work on the
machine slows all sides, not their ratios, but widens the spread), and a 200-step loss curve bf16
against fp32 (the gate for training in bf16).

The reference is imported at run time from a checkout you make (never copied here):

    git clone https://github.com/dut0817/FL-I2MoE_Decor /tmp/FL-I2MoE_Decor
    .venv/bin/python bench/vs_reference.py --reference /tmp/FL-I2MoE_Decor [--device cpu|cuda] [--threads 2]

Without `--reference` it prints our side only (and says so).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"small": (64, 49), "paper": (320, 196)}
HIDDEN, LAYERS, HEADS, LABELS, FFN = 256, 2, 4, 23, 2
BATCH, COALITIONS = 32, 256
LAMBDA_INT = 0.5
#: the reference's documented training peak at the paper shape (it keeps every attention map)
REFERENCE_PAPER_GB = 18.3


# ------------------------------------------------------------------------------------------ reference
def stub_reference_imports() -> None:
    """Stand-ins for what the reference imports at module level but its dense path never calls:
    FastMoE (CUDA-only `fmoe`, `fmoe_cuda`), dm-tree and torchvision (which does not install beside
    this torch). Real packages win when they import."""

    class _Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("stub: the reference's sparse (FastMoE) path is not available in this benchmark")

    def _unavailable(*args, **kwargs):
        raise RuntimeError("stub: the reference's sparse (FastMoE) path is not available in this benchmark")

    stubs = {
        "fmoe": {},
        "fmoe.transformer": {"_Expert": _Unavailable},
        "fmoe.layers": {"FMoE": _Unavailable, "_fmoe_general_global_forward": _unavailable,
                        "mark_module_parallel_comm": _unavailable},
        "fmoe.functions": {"ensure_comm": _unavailable, "Slice": _Unavailable, "AllGather": _Unavailable,
                           "count_by_gate": _unavailable},
        "fmoe.gates": {"NaiveGate": _Unavailable, "NoisyGate": _Unavailable},
        "fmoe_cuda": {},
        "tree": {},
        "torchvision": {"models": types.ModuleType("torchvision.models")},
    }
    for name, attrs in stubs.items():
        if name in sys.modules:
            continue
        try:
            __import__(name)
            continue
        except Exception:  # missing, or broken beside this torch
            pass
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        # a spec, so that importlib.util.find_spec (torch._dynamo's import-time scan) accepts the stand-in
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def load_reference(path: str) -> Callable[[], torch.nn.Module]:
    """A builder of the reference's InteractionMoE (transformer fusion, dense MLPs) from a checkout."""
    root = Path(path).resolve()
    if not (root / "src" / "imoe" / "InteractionMoE.py").is_file():
        raise SystemExit(f"--reference {path}: not a checkout of dut0817/FL-I2MoE_Decor (no src/imoe/InteractionMoE.py)")
    stub_reference_imports()
    sys.path.insert(0, str(root))
    from src.common.fusion_models.transformer import Transformer
    from src.imoe.InteractionMoE import InteractionMoE

    def build() -> torch.nn.Module:
        # the arguments of scripts/train_scripts/imoe/*/run_mmimdb.sh: 16 patches, 4 experts, 1 router,
        # top-k 2 (unused by the dense fusion), fusion_sparse False, gate None
        fusion = Transformer(2, 16, HIDDEN, LABELS, LAYERS, 2, 4, 1, 2, HEADS, 0.5, False, "None")
        return InteractionMoE(num_modalities=2, fusion_model=fusion, fusion_sparse=False, hidden_dim=HIDDEN,
                              hidden_dim_rw=256, num_layer_rw=2, temperature_rw=2.0)

    return build


# ------------------------------------------------------------------------------------------------ ours
def our_model(shape: str):
    from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel

    t_text, t_image = SHAPES[shape]
    cfg = FLI2MoEConfig(
        modalities=[{"name": "text", "input_dim": HIDDEN, "max_tokens": t_text},
                    {"name": "image", "input_dim": HIDDEN, "max_tokens": t_image}],
        hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, ffn_multiplier=FFN, num_labels=LABELS,
        problem_type="multi_label_classification", dropout=0.5, router_layers=2, router_hidden_size=256,
        router_temperature=2.0, interaction_loss_weight=LAMBDA_INT,
    )
    return FLI2MoEModel(cfg)


def make_batch(shape: str, batch: int, seed: int, device: str):
    """Features `{name: (B, T, 256)}`, masks (text lengths uniform in T/2..T, images whole), labels."""
    t_text, t_image = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    feats = {"text": torch.randn(batch, t_text, HIDDEN, generator=g), "image": torch.randn(batch, t_image, HIDDEN, generator=g)}
    lengths = torch.randint(t_text // 2, t_text + 1, (batch,), generator=g)
    masks = {"text": (torch.arange(t_text)[None] < lengths[:, None]).long(), "image": torch.ones(batch, t_image, dtype=torch.long)}
    labels = (torch.rand(batch, LABELS, generator=g) < 0.2).float()
    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return to(feats), to(masks), labels.to(device)


def forward_flops(shape: str, sequences: int) -> float:
    """Matmul FLOPs of the experts' forward over `sequences` = experts x batch rows of the full shape."""
    t = sum(SHAPES[shape])
    h = HIDDEN
    per_layer = 2 * t * h * (3 * h + h + 2 * FFN * h) + 4 * t * t * h
    return float(sequences * LAYERS * per_layer)


# ----------------------------------------------------------------------------------------------- sides
class Side:
    """One model under test: its precision and the three measured operations."""

    def __init__(self, name: str, precision: str, device: str) -> None:
        self.name, self.precision, self.device = name, precision, device

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Reference(Side):
    def __init__(self, build, shape: str, device: str, seed: int = 0) -> None:
        super().__init__("reference", "fp32", device)
        torch.manual_seed(seed)
        self.model = build().to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.data = {}

    def _inputs(self, shape: str, batch: int):
        key = (shape, batch)
        if key not in self.data:
            feats, masks, labels = make_batch(shape, batch, 1, self.device)
            self.data[key] = ([feats["text"], feats["image"]], [masks["text"].float(), masks["image"].float()], labels)
        return self.data[key]

    def train_step(self, shape: str) -> float:
        inputs, masks, labels = self._inputs(shape, BATCH)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        _, _, logits, interaction, _ = self.model(inputs, masks)
        loss = F.binary_cross_entropy_with_logits(logits, labels) + LAMBDA_INT * sum(interaction) / len(interaction)
        loss.backward()
        self.opt.step()
        return loss.item()

    def forward(self, shape: str, batch: int) -> None:
        inputs, masks, _ = self._inputs(shape, batch)
        self.model.eval()
        with torch.no_grad():
            self.model.inference(inputs, masks)


class Ours(Side):
    def __init__(self, shape: str, precision: str, device: str, seed: int = 0, compile_eval: bool = False) -> None:
        super().__init__(f"ours {precision}", precision, device)
        torch.manual_seed(seed)
        self.model = our_model(shape).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.data = {}
        # with --compile: the experts' forward through torch.compile (inductor) in the eval rows only
        self.compiled = torch.compile(self.model.experts.forward, dynamic=False) if compile_eval else None

    @contextlib.contextmanager
    def eval_kernels(self):
        if self.compiled is None:
            yield
            return
        self.model.experts.forward = self.compiled
        try:
            yield
        finally:
            del self.model.experts.forward

    def _inputs(self, shape: str, batch: int):
        key = (shape, batch)
        if key not in self.data:
            self.data[key] = make_batch(shape, batch, 1, self.device)
        return self.data[key]

    def train_step(self, shape: str) -> float:
        feats, masks, labels = self._inputs(shape, BATCH)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.model(feats, masks, labels=labels).loss
        loss.backward()
        self.opt.step()
        return loss.item()

    def forward(self, shape: str, batch: int) -> None:
        feats, masks, _ = self._inputs(shape, batch)
        self.model.eval()
        with torch.inference_mode(), self.autocast(), self.eval_kernels():
            self.model(feats, masks)

    def game(self, shape: str, coalitions: int) -> Callable[[], None]:
        """The explanation game on one whole example (text of full length) and `coalitions` random coalitions."""
        from modeling_fli2moe.explain import ExplainedExample, FeatureGame

        feats, _, _ = self._inputs(shape, 1)
        self.model.eval()
        game = FeatureGame(ExplainedExample(self.model, feats), head="mixture",
                           autocast_dtype=torch.bfloat16 if self.precision == "bf16" else None)
        g = torch.Generator().manual_seed(0)
        batch = torch.rand(coalitions, game.n_players, generator=g) < 0.5
        return lambda: game(batch)

    def coalitions(self, shape: str, coalitions: int) -> Callable[[], None]:
        """`coalitions` random coalitions of one whole example (absent tokens take the projected
        dataset-mean token) through `coalition_logits`, whole mixture."""
        from modeling_fli2moe.kernels import coalition_logits

        feats, _, _ = self._inputs(shape, 1)
        model = self.model.eval()
        with torch.inference_mode():
            projected = model.project(feats)
            fill = model.projected_modality_means()
        g = torch.Generator().manual_seed(0)
        present = {n: (torch.rand(coalitions, p.shape[1], generator=g) < 0.5).to(self.device) for n, p in projected.items()}

        def run() -> None:
            with torch.inference_mode(), self.autocast(), self.eval_kernels():
                coalition_logits(model, projected, fill, present)

        return run


# ---------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


class Timings(dict):
    """Median seconds per call by side, with `spread {side: (fastest, slowest)}` and `load` (the 1-minute
    load average when the calls ended)."""

    spread: dict[str, tuple[float, float]]
    load: float | None = None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device: str, warmup: int = 1) -> Timings:
    """Median seconds per call of every function, calls interleaved (a, b, c, a, b, c, ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            sync(device)
            times[k].append(clock() - t0)
    out = Timings({k: statistics.median(v) for k, v in times.items()})
    out.spread = {k: (min(v), max(v)) for k, v in times.items()}
    out.load = load_average()
    return out


def best_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Fastest of `repeats` timed calls of `fn`."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = clock()
        fn()
        sync(device)
        best = min(best, clock() - t0)
    return best


def matmul_peak(device: str, n: int | None = None) -> dict[str, float]:
    """Best GFLOP/s of an n x n matmul in fp32 and bf16."""
    n = n or (2048 if device == "cpu" else 8192)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out[name] = 2 * n**3 / best_seconds(lambda: a @ b, device, 6) / 1e9
    return out


def game_kernels(precision: str, device: str, coalitions: int = COALITIONS, repeats: int = 3) -> dict[str, float]:
    """Seconds of the game's matmuls alone and of its attention alone (small shape, one whole example padded
    to a multiple of 16 tokens as the model pads it, rows chunked as the model chunks them): what the game
    costs if every other pass over the activations (LayerNorm, GELU, residuals, biases, copies) were free."""
    from modeling_fli2moe import kernels

    t_text, t_image = SHAPES["small"]
    t = -(-(t_text + t_image) // 16) * 16
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    per_row = 4 * t * 3 * HIDDEN * (2 if precision == "bf16" else 4)
    rows = max(1, kernels.CHUNK_BYTES // per_row)
    chunks = -(-coalitions // rows)
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    segments = (t_text, t - t_text)
    weights = [make(4, HIDDEN, 3 * HIDDEN), make(4, HIDDEN, HIDDEN)]
    ffn = [(make(4, HIDDEN, FFN * HIDDEN), make(4, FFN * HIDDEN, HIDDEN)) for _ in segments]
    x = make(4, rows * t, HIDDEN)
    parts = [(make(4, rows * n, HIDDEN), make(4, rows * n, FFN * HIDDEN)) for n in segments]
    qkv = make(4 * rows, t, 3, HEADS, HIDDEN // HEADS)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    mask = torch.ones(4 * rows, 1, 1, t, dtype=torch.bool, device=device)
    mask[..., t_text + t_image :] = False

    def matmuls():
        for _ in range(LAYERS * chunks):
            for w in weights:
                torch.bmm(x, w)
            for (a, hid), (w_in, w_out) in zip(parts, ffn):
                torch.bmm(a, w_in)
                torch.bmm(hid, w_out)

    def attention():
        for _ in range(LAYERS * chunks):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    out = {}
    with torch.inference_mode():
        for name, fn in (("matmuls", matmuls), ("attention", attention)):
            fn()
            out[name] = best_seconds(fn, device, repeats)
    return out


def peak_rss_gb() -> float:
    """This process's own peak resident memory: `VmHWM` where Linux gives it. (`ru_maxrss` of a child also
    counts its parent's resident memory at the fork: the benchmark's parent can hold more than the child.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return float("inf")


# -------------------------------------------------------------------------------------- paper subprocess
def child_train(side: str, shape: str, steps: int, device: str, reference: str | None) -> dict:
    """One side's training steps in this (fresh) process: median step time and peak memory."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if side == "reference":
        s = Reference(load_reference(reference), shape, device)
    else:
        s = Ours(shape, side.split()[-1], device)
    s.train_step(shape)
    sync(device)
    times = []
    for _ in range(steps):
        t0 = clock()
        s.train_step(shape)
        sync(device)
        times.append(clock() - t0)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else peak_rss_gb()
    return {"step_s": statistics.median(times), "peak_gb": peak, "spread": (min(times), max(times)),
            "load": load_average()}


def run_child(side: str, shape: str, args) -> dict | str:
    cmd = [sys.executable, __file__, "--_child", f"{side}|{shape}", "--paper-steps", str(args.paper_steps),
           "--device", args.device, "--threads", str(args.threads), "--clock", args.clock]
    if args.reference:
        cmd += ["--reference", args.reference]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"failed (rc {proc.returncode}: {tail})"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ loss curve
def loss_curve(precision: str, steps: int, batch: int, device: str) -> list[float]:
    """Our training loss per step on a learnable stream (labels from a fixed random linear teacher of
    the pooled inputs), default dropout and lr; the same init, batches, dropout and noise draws for
    every precision."""
    side = Ours("small", precision, device)
    g = torch.Generator().manual_seed(123)
    teacher = {n: torch.randn(HIDDEN, LABELS, generator=g).to(device) for n in ("text", "image")}
    torch.manual_seed(7)  # dropout masks
    curve = []
    for i in range(steps):
        feats, masks, _ = make_batch("small", batch, 1000 + i, device)
        pooled = sum((feats[n] * masks[n][..., None]).sum(1) / masks[n].sum(1, keepdim=True) @ teacher[n] for n in feats)
        labels = (pooled > pooled.quantile(0.8)).float()
        side.model.train()
        side.opt.zero_grad(set_to_none=True)
        with side.autocast():
            loss = side.model(feats, masks, labels=labels, generator=torch.Generator(device=device).manual_seed(i)).loss
        loss.backward()
        side.opt.step()
        curve.append(loss.item())
    return curve


def smooth(curve: list[float], window: int = 10) -> list[float]:
    return [statistics.fmean(curve[max(0, i - window + 1) : i + 1]) for i in range(len(curve))]


# ------------------------------------------------------------------------------------------------ main
def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.2f} s" if s >= 1 else f"{1e3 * s:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=None, help="a checkout of dut0817/FL-I2MoE_Decor")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side and row (median)")
    parser.add_argument("--paper-steps", type=int, default=2, help="timed training steps per side at the paper shape")
    parser.add_argument("--curve-steps", type=int, default=200)
    parser.add_argument("--curve-batch", type=int, default=16)
    parser.add_argument("--curve-tolerance", type=float, default=0.02,
                        help="max relative gap of the 10-step-smoothed bf16 and fp32 loss curves")
    parser.add_argument("--only", default="small,game,paper,curve", help="parts to run (comma list of small,game,paper,curve)")
    parser.add_argument("--skip", default="", help="parts to leave out (comma list)")
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCK),
                        help="wall time, or this process's CPU time (steadier on a shared machine; CPU only)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--compile", action="store_true",
                        help="our eval rows (inference, coalitions) with the experts under torch.compile (needs a C++ "
                             "compiler; the first call of each shape compiles, in the warm-up)")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    global clock
    clock = CLOCK[args.clock]
    if args._child:
        side, shape = args._child.split("|")
        print(json.dumps(child_train(side, shape, args.paper_steps, args.device, args.reference)))
        return

    from modeling_fli2moe.precision import bf16_supported, cpu_flags

    parts = set(filter(None, args.only.split(","))) - set(filter(None, args.skip.split(",")))
    skip = {"small", "game", "paper", "curve"} - parts
    chosen = "bf16" if bf16_supported() else "fp32"
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        flags = cpu_flags()
        where = (f"CPU, {torch.get_num_threads()} threads, avx512_bf16: {'avx512_bf16' in flags}, "
                 f"AMX: {'amx_bf16' in flags}")
    print(f"device: {args.device} ({where}); torch {torch.__version__}; our precision here: {chosen}; "
          f"clock: {args.clock}; repeats: {args.repeats}; torch.compile (eval rows): {args.compile}; "
          f"load average at start: {os.getloadavg()}")
    peak = matmul_peak(args.device)
    print(f"measured matmul peak: {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} GFLOP/s bf16")
    build = None
    if args.reference:
        build = load_reference(args.reference)
    else:
        print("no --reference given: our side only (clone dut0817/FL-I2MoE_Decor and pass its path for the ratios)")
    precisions = ["fp32"] + (["bf16"] if chosen == "bf16" else [])
    side_names = (["reference"] if build else []) + [f"ours {p}" for p in precisions]

    rows: list[dict] = []  # {phase, shape, times {side: s}, flops, target, kind}

    def add(phase, shape, times, flops, target, kind="time", per=None):
        rows.append({"phase": phase, "shape": shape, "times": dict(times), "flops": flops, "target": target,
                     "kind": kind, "per": per, "spread": dict(getattr(times, "spread", {})),
                     "load": getattr(times, "load", None)})

    # ---- in-process rows, sides alternating
    for shape in [s for s in ("small", "paper") if s not in skip]:
        sides = ([Reference(build, shape, args.device)] if build else []) + [Ours(shape, p, args.device, compile_eval=args.compile) for p in precisions]
        if shape == "small":
            t = alternate({s.name: (lambda s=s: s.train_step(shape)) for s in sides}, args.repeats, args.device)
            add("training step", shape, t, 3 * forward_flops(shape, 4 * 3 * BATCH), 4.0)
        t = alternate({s.name: (lambda s=s: s.forward(shape, BATCH)) for s in sides}, args.repeats, args.device)
        add("inference, batch of 32", shape, t, forward_flops(shape, 4 * BATCH), 3.0)
        if shape == "small":
            fns = {s.name: (lambda s=s: s.forward(shape, COALITIONS)) for s in sides}
            fns.update({f"{s.name} one example": s.coalitions(shape, COALITIONS) for s in sides if isinstance(s, Ours)})
            t = alternate(fns, args.repeats, args.device)
            raw, one = Timings(), Timings()
            for name in t:
                (one if name.endswith(" one example") else raw)[name.removesuffix(" one example")] = t[name]
            if "reference" in t:
                one["reference"] = t["reference"]
            for part in (raw, one):
                part.spread = {k: t.spread[k + (" one example" if part is one and k != "reference" else "")] for k in part}
                part.load = t.load
            add(f"whole mixture, B = {COALITIONS}", shape, raw, forward_flops(shape, 4 * COALITIONS), 3.5,
                kind="rate", per=COALITIONS)
            add(f"{COALITIONS} coalitions of one example (coalition_logits)", shape, one,
                forward_flops(shape, 4 * COALITIONS), 3.5, kind="rate", per=COALITIONS)
            if "game" not in skip and "small" not in skip:
                ours = [s for s in sides if isinstance(s, Ours)]
                fns = {}
                for s in ours:
                    fns[f"raw {s.precision}"] = lambda s=s: s.forward(shape, COALITIONS)
                    fns[f"game {s.precision}"] = s.game(shape, COALITIONS)
                t = alternate(fns, args.repeats, args.device)
                for p in precisions:
                    rows.append({"phase": "game vs raw forward", "shape": shape, "precision": p,
                                 "raw": t[f"raw {p}"], "game": t[f"game {p}"], "kind": "game",
                                 "flops": forward_flops(shape, 4 * COALITIONS)})
        del sides
    # ---- paper-shape training: one process per side (its own peak memory), back to back
    if "paper" not in skip:
        times, mems = Timings(), Timings()
        times.spread, mems.spread = {}, {}
        for name in side_names:
            if name == "reference" and args.device == "cpu" and mem_available_gb() < REFERENCE_PAPER_GB + 1:
                times[name] = mems[name] = None
                print(f"reference paper training skipped: {mem_available_gb():.1f} GB available, it needs about "
                      f"{REFERENCE_PAPER_GB} GB")
                continue
            r = run_child(name, "paper", args)
            if isinstance(r, str):
                print(f"{name} paper training {r}")
                times[name] = mems[name] = None
                continue
            times[name], mems[name] = r["step_s"], r["peak_gb"]
            times.spread[name], times.load = tuple(r["spread"]), r["load"]
        add("training step", "paper", times, 3 * forward_flops("paper", 4 * 3 * BATCH), 4.0)
        add("peak memory, training", "paper", mems, None, 4.0, kind="memory")

    # ---- table
    def ratio(row, name):
        a, b = row["times"].get("reference"), row["times"].get(name)
        if a is None or b is None:
            return None
        return a / b if row["kind"] != "memory" else a / b

    print(f"\n| phase | shape | {' | '.join(side_names)} | "
          + " | ".join(f"{n.split()[-1]} / ref" for n in side_names if n != "reference") + " | target | met | load |")
    print("|---" * (5 + len(side_names) + len([n for n in side_names if n != "reference"])) + "|")
    verdicts = []
    for row in rows:
        if row["kind"] == "game":
            continue
        cells = []
        for n in side_names:
            v = row["times"].get(n)
            if row["kind"] == "memory":
                cells.append("-" if v is None else f"{v:.2f} GB")
            elif row["kind"] == "rate":
                cells.append("-" if v is None else f"{row['per'] / v:.0f}/s")
            else:
                cells.append(fmt_time(v))
        ratios = []
        for n in side_names[1 if build else 0 :]:
            r = ratio(row, n) if build else None
            if r is None:
                ratios.append("-")
            elif row["kind"] == "memory":
                ratios.append(f"{r:.1f}x less")
            else:
                ratios.append(f"{r:.2f}x")
        ours_chosen = f"ours {chosen}"
        if row["kind"] == "memory":
            v = row["times"].get(ours_chosen)
            target = f"<= {row['target']:g} GB ({chosen})"
            met = None if v is None else v <= row["target"]
        else:
            target = f">= {row['target']:g}x ({chosen}), fp32 >= 1x"
            r, r32 = ratio(row, ours_chosen), ratio(row, "ours fp32")
            met = None if (r is None or r32 is None) else (r >= row["target"] and r32 >= 1.0)
        verdicts.append(met)
        print(f"| {row['phase']} | {row['shape']} | {' | '.join(cells)} | "
              + " | ".join(ratios[: len(side_names) - (1 if build else 0)]) + f" | {target} | "
              + {True: "yes", False: "**short**", None: "-"}[met]
              + f" | {'-' if row.get('load') is None else format(row['load'], '.1f')} |")

    print(f"\nspread of the timed calls (fastest - slowest of {args.repeats} per side; paper training: "
          f"{args.paper_steps} steps per side):")
    for row in rows:
        if row["kind"] in ("memory", "game") or not row.get("spread"):
            continue
        cells = [f"{n} {fmt_time(a)} - {fmt_time(b)}" for n, (a, b) in row["spread"].items()]
        print(f"  {row['phase']}, {row['shape']}: " + "; ".join(cells))

    game_rows = [r for r in rows if r["kind"] == "game"]
    if game_rows:
        print(f"\nexplanation game (FeatureGame, one example, {COALITIONS} coalitions, small shape) vs our raw batched forward:")
        for r in game_rows:
            p = r["precision"]
            gflops = r["flops"] / r["game"] / 1e9
            ok = r["raw"] / r["game"] >= 0.8
            share = 100 * gflops / peak[p]
            print(f"  {p}: game {COALITIONS / r['game']:.0f}/s, raw {COALITIONS / r['raw']:.0f}/s -> "
                  f"{r['raw'] / r['game']:.2f}x of raw (target >= 0.8x: {'yes' if ok else 'no'}); "
                  f"{gflops:.0f} GFLOP/s = {share:.0f}% of the {p} matmul peak (target >= 60% for {chosen}: "
                  f"{'yes' if share >= 60 else 'no'})")
            kernels = game_kernels(p, args.device)
            alone = kernels["matmuls"] + kernels["attention"]
            print(f"    of its {1e3 * r['game']:.0f} ms, the matmuls alone take {1e3 * kernels['matmuls']:.0f} ms and the "
                  f"attention alone {1e3 * kernels['attention']:.0f} ms: with every other pass free it would reach "
                  f"{100 * r['flops'] / alone / 1e9 / peak[p]:.0f}% of the peak; the rest "
                  f"({100 * (1 - alone / r['game']):.0f}% of its time) is LayerNorm, GELU, residuals, biases and copies")
            if p == chosen:
                verdicts.append(ok and share >= 60)

    print(f"\nachieved GFLOP/s (expert matmuls and attention, full shape) and share of the measured peak "
          f"({peak['fp32']:.0f} fp32, {peak['bf16']:.0f} bf16):")
    for row in rows:
        if row["kind"] in ("memory", "game") or not row["flops"]:
            continue
        parts = []
        for n in side_names:
            v = row["times"].get(n)
            if v is None:
                continue
            p = "bf16" if n.endswith("bf16") else "fp32"
            g = row["flops"] / v / 1e9
            parts.append(f"{n} {g:.0f} ({100 * g / peak[p]:.0f}% of {p})")
        note = " (FLOPs of the full forward: the per-token work it shares is not counted out)" if "one example" in row["phase"] else ""
        print(f"  {row['phase']}, {row['shape']}: " + ", ".join(parts) + note)

    curves = None
    if "curve" not in skip and chosen == "bf16":
        curves = {p: loss_curve(p, args.curve_steps, args.curve_batch, args.device) for p in ("fp32", "bf16")}
        s32, s16 = smooth(curves["fp32"]), smooth(curves["bf16"])
        gap = max(abs(a - b) / abs(a) for a, b in zip(s32, s16))
        raw_gap = max(abs(a - b) / abs(a) for a, b in zip(curves["fp32"], curves["bf16"]))
        ok = gap <= args.curve_tolerance
        print(f"\nloss curve, {args.curve_steps} training steps (small shape, B = {args.curve_batch}, dropout 0.5, "
              f"Adam lr 1e-4, fresh learnable batches), bf16 autocast vs fp32:")
        for p, c in (("fp32", s32), ("bf16", s16)):
            marks = list(range(0, len(c), max(1, len(c) // 10))) + [len(c) - 1]
            print(f"  {p} (10-step mean) " + " ".join(f"{c[i]:.4f}" for i in marks))
        print(f"  max relative gap of the smoothed curves {gap:.2%} (per step {raw_gap:.2%}); tolerance "
              f"{args.curve_tolerance:.0%} -> bf16 training {'matches' if ok else 'does NOT match'} fp32")
        verdicts.append(ok)
    elif chosen != "bf16":
        print("\nloss curve skipped: this machine trains in fp32")

    met = [v for v in verdicts if v is not None]
    print(f"\n{sum(met)} of {len(met)} checked targets met" + ("" if build else " (no reference: ratios not measured)")
          + f"; load average at the end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak, "chosen": chosen, "rows": rows, "curves": curves}, indent=1))


if __name__ == "__main__":
    main()
