"""`fli2moe explain` survives interruption: killed for real (SIGINT; SIGKILL under `accelerate launch`),
resumed, it writes the same files as an uninterrupted run; a truncated record, changed settings and a second
run into the same folder are handled; Ctrl-C anywhere prints one line that says how to continue."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modeling_fli2moe.cli import main as cli_main
from modeling_fli2moe.data import make_planted, save_planted
from modeling_fli2moe.records import RecordWriter, read_records, repair_records
from modeling_fli2moe.testing.compare import assert_same_values

ROOT = Path(__file__).resolve().parents[1]
TINY = ["hidden_size=16", "router_hidden_size=16", "num_heads=2", "training.per_device_train_batch_size=8",
        "training.bf16=false", "training.disable_tqdm=true"]
LIMIT = "6"
FINAL_FILES = ("per_example.json", "explain_report.json", "examples.json", "report.html")


def _map_config(folder: Path) -> Path:
    """The planted run config with EfficientNet's whole-image map as tokens (one encoder pass per image)."""
    cfg = json.loads((ROOT / "hub_configs" / "planted.json").read_text())
    next(m for m in cfg["modalities"] if m["name"] == "image")["encoder"]["tokens"] = "map"
    path = folder / "planted_map.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread) -> dict:
    """A tiny trained checkpoint and its uninterrupted explanation run. Every run of this module uses one thread
    (the subprocesses too): results are bit-identical at equal thread counts, not across them (float sums)."""
    root = tmp_path_factory.mktemp("resume")
    save_planted(make_planted(n_per_kind=8, random_state=0, split_fractions=(0.5, 0.1, 0.4)), root / "data")
    common = ["--data-dir", str(root / "data"), "--cache-dir", str(root / "cache")]
    config = _map_config(root)
    assert cli_main(["train", "--config", str(config), "--output-dir", str(root / "model"), *common, *TINY,
                     "training.num_train_epochs=1"]) == 0
    explain = ["explain", "--checkpoint", str(root / "model"), *common, "--limit", LIMIT, "--budget", "512"]
    assert cli_main([*explain, "--output-dir", str(root / "whole")]) == 0
    return {"root": root, "config": config, "common": common, "explain": explain, "whole": root / "whole"}


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _records(out: Path) -> int:
    return sum(len(read_records(f)) for f in (out / "records").glob("*.jsonl"))


def _start_and_stop(cmd: list[str], out: Path, sig: int, *, at_least: int = 1, timeout: float = 240) -> subprocess.Popen:
    """Start `cmd`, wait until `at_least` examples are saved in `out`, then send `sig`; returns the ended process."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while _records(out) < at_least:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no example was saved in time"
        time.sleep(0.05)
    if sig == signal.SIGKILL:  # the whole tree at once (torch's launcher starts its workers in their own sessions)
        import psutil

        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
    else:
        proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc


def _without_wall_times(name: str, data: bytes) -> bytes:
    """The files less the seconds each drawn explanation took (a wall time: no two runs share it)."""
    if name == "examples.json":
        records = json.loads(data)
        for record in records:
            for explanation in record["explanations"].values():
                explanation.pop("seconds")
        return json.dumps(records).encode()
    if name == "report.html":
        return re.sub(rb" in \d+\.\d s\.</p>", b" in _ s.</p>", data)
    return data


def _message(stderr: str, command: str) -> str:
    """The one line an interrupted command prints (library warnings at exit may follow it)."""
    lines = [line for line in stderr.split("\n") if line.startswith(f"fli2moe {command}:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _same_as_whole(out: Path, whole: Path) -> None:
    for name in FINAL_FILES:
        ours, theirs = (_without_wall_times(name, (d / name).read_bytes()) for d in (out, whole))
        if name.endswith(".json"):
            # floats within 1e-5 relative or 1e-7 absolute (for spreads of near-equal values): one example's
            # numbers can differ in the last bits when computed in another batch (another process's shard), on
            # CPUs whose kernels depend on the shape (an AMD EPYC with avx512_bf16: a routing weight
            # 0.24998338520526886 against 0.24998340010643005)
            assert_same_values(json.loads(ours), json.loads(theirs), name, rel_tol=1e-5, abs_tol=1e-7, nan_equal=True)
        else:
            assert ours == theirs, name
    n = int(LIMIT)
    done = [(r["model"], r["index"]) for f in (out / "records").glob("*.jsonl") for r in read_records(f)]
    assert sorted(done) == [("fl_i2moe", i) for i in range(n)]  # none lost, none doubled


def test_records_file_keeps_only_whole_records(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.append({"index": 0, "x": [1.5, float("nan")]})
        w.append({"index": 1, "x": [2.0]})
    with open(path, "ab") as fh:
        fh.write(b'{"index": 2, "x": [3.')  # killed mid-write
    assert [r["index"] for r in read_records(path)] == [0, 1]
    assert repair_records(path) == len(b'{"index": 2, "x": [3.')
    with RecordWriter(path) as w:
        w.append({"index": 2, "x": [3.0]})
    assert [r["index"] for r in read_records(path)] == [0, 1, 2]
    path.write_text('{"index": 0}\nnot json\n{"index": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_records(path)


def test_sigint_then_resume_equals_an_uninterrupted_run(run, capsys):
    out = run["root"] / "sigint"
    cmd = [sys.executable, "-m", "modeling_fli2moe.cli", *run["explain"], "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while _records(out) < 1:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        # a second run into the same folder while the first runs: refused, naming the first
        assert cli_main([*run["explain"], "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in err and "in use" in err
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    last = _message(stderr, "explain")
    assert "Traceback" not in stderr
    assert last.startswith("fli2moe explain: interrupted;") and "examples are saved in" in last
    assert f"--output-dir {out}" in last and "Continue with: fli2moe explain" in last
    saved = _records(out)
    assert 1 <= saved < int(LIMIT) and f"{saved} of {LIMIT} examples" in last
    assert cli_main([*run["explain"], "--output-dir", str(out)]) == 0
    _same_as_whole(out, run["whole"])


def test_other_settings_are_refused_naming_them(run, capsys):
    out = run["whole"]
    before = {name: (out / name).read_bytes() for name in FINAL_FILES}
    assert cli_main([*run["explain"], "--output-dir", str(out), "--budget", "1024", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "--budget: started with 512, now 1024" in err and "--seed: started with 0, now 3" in err
    assert {name: (out / name).read_bytes() for name in FINAL_FILES} == before  # nothing overwritten
    stray = run["root"] / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert cli_main([*run["explain"], "--output-dir", str(stray)]) == 2
    assert "holds no explanation run" in capsys.readouterr().err and (stray / "notes.txt").read_text() == "mine"


def test_two_processes_killed_a_record_cut_then_resumed(run):
    """`accelerate launch` with 2 processes, SIGKILLed (launcher and workers) part-way, one records file cut in
    the middle of its last record, then the same command again: nothing lost or doubled, the 1-process result."""
    out = run["root"] / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "modeling_fli2moe.cli",
           *run["explain"], "--output-dir", str(out)]
    _start_and_stop(cmd, out, signal.SIGKILL, at_least=3)
    assert (out / ".fli2moe.lock").exists()  # a killed run cannot clean up: its stale lock is taken over
    files = sorted((out / "records").glob("*.jsonl"))
    assert len(files) == 2  # one file per process
    file = max(files, key=lambda f: len(read_records(f)))
    whole = file.read_bytes()
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    file.write_bytes(whole[: last_start + (len(whole) - last_start) // 2])  # the last record cut mid-way
    assert 2 <= _records(out) < int(LIMIT)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no longer runs" in done.stderr and "removed a partial last record" in done.stderr
    _same_as_whole(out, run["whole"])


def test_ctrl_c_in_training_and_encoding_prints_one_line(run):
    out = run["root"] / "train_sigint"
    cache = run["root"] / "fresh_cache"
    cmd = [sys.executable, "-m", "modeling_fli2moe.cli", "train", "--config", str(run["config"]), "--output-dir",
           str(out), "--data-dir", str(run["root"] / "data"), "--cache-dir", str(cache), *TINY,
           "training.num_train_epochs=500"]
    # while encoding: the cache keeps no partial file
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not list(cache.glob("*/encoder.json")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    last = _message(stderr, "train")
    assert last.startswith("fli2moe train: interrupted before the first checkpoint;") and "Start again with" in last, \
        stderr[-3000:]
    # while training, after a checkpoint: the line names it and the --resume command
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not any((p / "model.safetensors").is_file() for p in out.glob("checkpoint-*")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    last = _message(stderr, "train")
    assert last.startswith("fli2moe train: interrupted; the last checkpoint is") and last.endswith("--resume"), \
        stderr[-3000:]
    assert "checkpoint-" in last
