"""A newcomer's first run: the README's two commands, timed, with met / short for each target.

1. `make demo` (the main job) on a fresh feature cache and a fresh output folder: wall seconds in all and per
   stage (benchmark, features, training, explanations, as the demo prints them), the test accuracy, and
   whether the printed explanation's top synergistic pair is the planted one. Targets: <= 180 s, test
   accuracy >= 0.97, an explanation printed with the planted truth beside it, a `report.html` written.
2. `make test` (what .ci/run calls): wall seconds and the pytest summary line. Target: <= 300 s.

Run it alone on the machine (a benchmark beside other work measures the contention):

    .venv/bin/python bench/first_run.py                 # both
    .venv/bin/python bench/first_run.py --skip-tests    # the demo only
    .venv/bin/python bench/first_run.py --probes 40     # also the planted rates on the demo checkpoint

With `--probes N`, `bench/planted_probes.py` runs on the demo's checkpoint (N examples per kind): the hit
rates, the occlusion check and the pair-masking tests that the demo's explanation stands for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO_SECONDS, DEMO_ACCURACY, TEST_SECONDS = 180.0, 0.97, 300.0


def cpu_name() -> str:
    from modeling_fli2moe.precision import cpu_flags

    try:
        name = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        name = platform.processor() or "unknown CPU"
    flags = cpu_flags()
    kind = "AMX" if "amx_tile" in flags else ("avx512_bf16" if "avx512_bf16" in flags else "no bf16 (AVX2)")
    return f"{name} ({kind}, {os.cpu_count()} cores)"


def run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, str, int]:
    """Run `cmd` from the repository root, its output teed into `log`; wall seconds, output, exit code."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t
    log.write_text(proc.stdout)
    return seconds, proc.stdout, proc.returncode


def verdict(ok: bool) -> str:
    return "met" if ok else "SHORT"


def demo_rows(out: str, seconds: float, rc: int) -> list[tuple[str, str, str, bool]]:
    stages = dict((k, float(v)) for k, v in re.findall(r"^\s+(\w+) in ([0-9.]+) s$", out, flags=re.M))
    metrics = re.search(r"^test metrics: (\{.*\})$", out, flags=re.M)
    accuracy = json.loads(metrics.group(1)).get("test_accuracy") if metrics else None
    top = re.search(r"^synergy\s+'(.+?)' x '(.+?)':", out, flags=re.M)
    truth = re.search(r"^planted truth: .* the word '(.+?)' x the .* in image region (\d+)", out, flags=re.M)
    report = re.search(r"^report over \d+ test examples: (.*report\.html)$", out, flags=re.M)
    rows = [("demo exit code", str(rc), "0", rc == 0),
            ("demo wall seconds", f"{seconds:.0f}", f"<= {DEMO_SECONDS:.0f}", rc == 0 and seconds <= DEMO_SECONDS)]
    rows += [(f"  stage: {name}", f"{s:.1f}", "", True) for name, s in stages.items()]
    rows.append(("test accuracy", f"{accuracy:.4f}" if accuracy is not None else "n/a", f">= {DEMO_ACCURACY}",
                 accuracy is not None and accuracy >= DEMO_ACCURACY))
    shown = f"{top.group(1)} x {top.group(2)}" if top else "none"
    rows.append(("explanation printed, truth beside it", shown, "yes", bool(top and truth)))
    if top and truth:
        word_hit = top.group(1) == truth.group(1) or top.group(2) == truth.group(1)
        rows.append(("  its top synergy pair holds the planted word", str(word_hit), "", True))
    rows.append(("report.html written", report.group(1) if report else "no", "yes",
                 bool(report and Path(report.group(1)).is_file())))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--probes", type=int, default=0, metavar="N", help="planted probes on the demo checkpoint")
    parser.add_argument("--demo-args", default="", help="more arguments for `fli2moe demo`, e.g. '--seed 1'")
    parser.add_argument("--keep", default=None, help="folder for the demo's outputs and logs (default: a temporary one)")
    args = parser.parse_args()
    python = ROOT / ".venv" / "bin" / "python"
    if not python.is_file():
        print("no .venv: run `make setup` (or `make demo` once) first", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="fli2moe-first-run-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()}; outputs and logs in {work}")
    rows: list[tuple[str, str, str, bool]] = []
    if not args.skip_demo:
        # the README's command with a fresh output folder and a fresh feature cache (FLI2MOE_CACHE)
        env = dict(os.environ, FLI2MOE_CACHE=str(work / "cache"))
        seconds, out, rc = run(["make", "demo", f"ARGS=--output-dir {work / 'planted'} {args.demo_args}".strip()], env, work / "demo.log")
        rows += demo_rows(out, seconds, rc)
        if args.probes and rc == 0:
            cmd = [str(python), "bench/planted_probes.py", "--checkpoint", str(work / "planted" / "fl_i2moe"),
                   "--data-dir", str(work / "planted" / "data"), "--n", str(args.probes),
                   "--kinds", "synergy", "redundancy", "--json", str(work / "probes.json")]
            _, out, _ = run(cmd, env, work / "probes.log")
            print("".join(line + "\n" for line in out.splitlines() if line.startswith("  ") and "n/a" not in line))
    if not args.skip_tests:
        seconds, out, rc = run(["make", "test"], dict(os.environ), work / "test.log")
        summary = [line for line in out.splitlines() if re.search(r"\d+ passed", line)]
        rows.append(("make test exit code", str(rc), "0", rc == 0))
        rows.append(("make test wall seconds", f"{seconds:.0f}", f"<= {TEST_SECONDS:.0f}", rc == 0 and seconds <= TEST_SECONDS))
        rows.append(("  pytest", summary[-1].strip("= ") if summary else "no summary", "", True))
    width = max(len(r[0]) for r in rows)
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:>12}  {target:>8}  {verdict(ok) if target else ''}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
