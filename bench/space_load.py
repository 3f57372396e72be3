"""The Space under load: latency of /explain with 1, 4 and 8 users at once, peak memory, and a full queue.

Starts `spaces_app/app.py` on a checkpoint (its shipped queue settings unless --concurrency / --queue-size
say otherwise), then for each number of users U sends U calls at once through `gradio_client` (distinct
planted examples, the Space's default budget unless --budget), `--rounds` times, and prints per U the p50 /
p95 latency of a call (submit to answer), the calls per second, and the server's peak resident memory.
Last, it sends queue size + 4 calls at once and counts the ones refused with gradio's "Queue is full".

    .venv/bin/python bench/space_load.py --checkpoint outputs/planted/fl_i2moe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_fli2moe.testing.servers import free_port, wait_for_port  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def examples(n: int, folder: Path) -> list[tuple[str, str]]:
    from modeling_fli2moe.data import make_planted

    ds = make_planted(n_per_kind=max(10, 2 * n), random_state=7)["test"]
    out = []
    for i, row in enumerate(ds.select(range(min(n, len(ds))))):
        path = folder / f"{i}.png"
        row["image"].save(path)
        out.append((str(path), row["text"]))
    return out


def round_of_calls(client, inputs, budget: int) -> list[float]:
    """Send every input at once; the latency of each call, submit to answer."""
    from gradio_client import handle_file

    start = time.perf_counter()
    jobs = [client.submit(handle_file(p), text, budget, 6, 0, api_name="/explain") for p, text in inputs]
    latencies = [None] * len(jobs)
    pending = set(range(len(jobs)))
    while pending:
        for i in list(pending):
            if jobs[i].done():
                jobs[i].result()  # raises if the call failed
                latencies[i] = time.perf_counter() - start
                pending.discard(i)
        time.sleep(0.005)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "outputs" / "planted" / "fl_i2moe"))
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--concurrency", type=int, default=None, help="default: the app's")
    parser.add_argument("--queue-size", type=int, default=None, help="default: the app's")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from gradio_client import Client

    from modeling_fli2moe.precision import cpu_flags

    port = free_port()
    env = dict(os.environ, FLI2MOE_CHECKPOINT=args.checkpoint, GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))
    if args.concurrency:
        env["FLI2MOE_CONCURRENCY"] = str(args.concurrency)
    if args.queue_size:
        env["FLI2MOE_QUEUE_SIZE"] = str(args.queue_size)
    folder = Path(tempfile.mkdtemp(prefix="space-load-"))
    log = folder / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "spaces_app" / "app.py")], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, timeout=300, output=log.read_text)
        concurrency = env.get("FLI2MOE_CONCURRENCY", "2 (the app default)")
        queue_size = int(env.get("FLI2MOE_QUEUE_SIZE", 16))
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        inputs = examples(max(args.users), folder)
        round_of_calls(client, inputs[:1], args.budget)  # warm-up: first-call costs out of the figures
        rows = []
        for users in args.users:
            lat = []
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                lat += round_of_calls(client, inputs[:users], args.budget)
            wall = time.perf_counter() - t0
            rows.append({"users": users, "calls": len(lat), "p50_s": float(np.percentile(lat, 50)),
                         "p95_s": float(np.percentile(lat, 95)), "calls_per_s": len(lat) / wall,
                         "peak_rss_mib": peak_rss_mib(proc.pid)})
        from gradio_client import handle_file

        path, text = inputs[0]
        flood = [client.submit(handle_file(path), text, 512, 2, 0, api_name="/explain") for _ in range(queue_size + 4)]
        refused = answered = 0
        for job in flood:
            try:
                job.result(timeout=600)
                answered += 1
            except Exception as err:
                refused += "Queue is full" in str(err)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    cpu = "avx512_bf16" if "avx512_bf16" in cpu_flags() else "avx2"
    amx = "amx_tile" in cpu_flags()
    print(f"Space load: {args.checkpoint}, budget {args.budget}, {os.cpu_count()} CPUs "
          f"({'AMX' if amx else cpu}), concurrency {concurrency}, queue size {queue_size}, {args.rounds} rounds")
    print("| users at once | calls | p50 latency (s) | p95 latency (s) | calls per s | server peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']} | {r['calls']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['calls_per_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} |")
    print(f"queue full: {queue_size + 4} calls at once -> {answered} answered, {refused} refused with "
          "'Queue is full'")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "flood": {"sent": queue_size + 4, "answered": answered,
                                                                       "refused": refused}}, indent=1))


if __name__ == "__main__":
    main()
