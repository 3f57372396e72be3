"""The Gradio Space: the /explain API through gradio_client, and a real headless Chromium session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from modeling_fli2moe import FLI2MoEModel
from modeling_fli2moe.data import make_planted
from modeling_fli2moe.testing.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
QUEUE_SIZE = 8  # requests that may wait in the test server's queue (the app's default is 16)
url_pid: dict[str, int] = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small untrained FL-I2MoE over the real offline encoders (the app only needs a valid checkpoint)."""
    from modeling_fli2moe.run_config import load_run_config

    cfg = load_run_config(ROOT / "hub_configs" / "planted.json", ["hidden_size=16", "router_hidden_size=16"]).model
    torch.manual_seed(0)
    model = FLI2MoEModel(cfg)
    model.set_modality_means({"text": torch.randn(384) * 0.1, "image": torch.rand(1280)})
    path = tmp_path_factory.mktemp("space") / "ckpt"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def planted_example(tmp_path_factory):
    ds = make_planted(n_per_kind=10, random_state=5)["test"]
    row = next(r for r in ds if r["kind"] == "synergy")
    path = tmp_path_factory.mktemp("img") / "example.png"
    row["image"].save(path)
    return path, row["text"], row


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "app.log"
    env = dict(os.environ, FLI2MOE_CHECKPOINT=str(checkpoint), GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT), FLI2MOE_QUEUE_SIZE=str(QUEUE_SIZE))
    with open(log, "w") as out:  # a file, not a pipe: a pipe nobody reads fills up and blocks the server
        proc = subprocess.Popen([sys.executable, str(ROOT / "spaces_app" / "app.py")], env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    wait_for_port(proc, port, timeout=180, output=log.read_text)
    url = f"http://127.0.0.1:{port}/"
    url_pid[url] = proc.pid
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_api_explain_returns_a_consistent_explanation(server, planted_example):
    from gradio_client import Client, handle_file

    path, caption, row = planted_example
    client = Client(server, verbose=False)
    result = client.predict(handle_file(str(path)), caption, 512, 4, 0, api_name="/explain")
    label, download = result[0], result[-3]
    assert label["label"] in ("negative", "positive")
    exp = json.loads(Path(download).read_text())
    assert exp["label"] == label["label"]
    assert set(exp["maps"]) == {"mixture", "uniqueness_text", "uniqueness_image", "synergy", "redundancy"}
    assert exp["evaluations"] <= 512
    # the pairs are cross-modal, between caption tokens and image regions of this example
    tokens = exp["tokens"]["text"]
    assert row["evidence_word"] in " ".join(tokens)
    for p in exp["synergy_pairs"] + exp["redundancy_pairs"]:
        assert {p["modality_a"], p["modality_b"]} == {"text", "image"}
        assert 0 <= p["position_b"] < 49
    assert abs(sum(exp["routing_weights"].values()) - 1) < 1e-4
    # the numbers say what they are: the status names the features' kind (and where evidence leaks), the units
    status = result[-1]
    assert "Features (text: local, image: local)" in status and "evidence leaks between tokens" in status
    assert "(0 to 1)" in status and "in the log-odds of the predicted label" in status
    assert "coalition evaluations (forward passes of the model on masked inputs)" in status


def test_api_bad_input_is_a_message_not_a_traceback(server, planted_example, tmp_path):
    from gradio_client import Client, handle_file

    path, caption, _ = planted_example
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="type a caption"):
        client.predict(handle_file(str(path)), "   ", 256, 2, 0, api_name="/explain")
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(not_image)), caption, 256, 2, 0, api_name="/explain")


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_upload_type_click_and_see_results(server, planted_example, tmp_path):
    from playwright.sync_api import sync_playwright

    path, caption, _ = planted_example
    shots = ROOT / "outputs" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(server, wait_until="networkidle")
        page.locator("#input-image input[type=file]").set_input_files(str(path))
        page.locator("#caption textarea").fill(caption)
        page.locator("#explain-button").click()
        try:
            page.locator("#heatmaps img").first.wait_for(timeout=240_000)
            assert page.locator("#heatmaps img").count() >= 5  # mixture + four experts
            page.screenshot(path=str(shots / "space-tokens.png"), full_page=True)
            page.get_by_role("tab", name="Interacting pairs").click()
            page.locator("#pairs-table").get_by_text("synergy").first.wait_for(timeout=30_000)
            assert page.locator("#pairs-table").get_by_text("redundancy").count() >= 1
            assert page.get_by_text("numbered row x 7 + column from 0").count() >= 1  # what the region numbers mean
            assert "Traceback" not in page.content()
        finally:
            page.screenshot(path=str(shots / "space.png"), full_page=True)
        shutil.copy(shots / "space.png", tmp_path / "space.png")
        browser.close()
    assert (shots / "space.png").stat().st_size > 10_000


def test_api_refuses_a_negative_seed_naming_it(server, planted_example):
    from gradio_client import Client, handle_file

    path, caption, _ = planted_example
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match="random_state"):
        client.predict(handle_file(str(path)), caption, 512, 4, -1, api_name="/explain")


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _explanation(result) -> dict:
    exp = json.loads(Path(result[-3]).read_text())
    exp.pop("seconds")  # a wall time
    return exp


def test_eight_concurrent_users_then_a_full_queue(server, planted_example, tmp_path):
    """8 calls at once (4 inputs, each twice): all answer, equal inputs give equal results, memory stays bounded;
    calls beyond the queue's size get gradio's "Queue is full" answer, not a hang."""
    from gradio_client import Client, handle_file

    path, caption, _ = planted_example
    inputs = [(caption, 0), (caption, 1), ("a photo of nothing in particular", 0), (caption + " today", 2)]
    client = Client(server, verbose=False)
    before = _peak_rss_mib(url_pid[server])
    jobs = [client.submit(handle_file(str(path)), text, 512, 2, seed, api_name="/explain")
            for text, seed in inputs * 2]
    from gradio_client.utils import Status

    deadline = time.monotonic() + 60
    while any(job.status().code in (Status.STARTING, Status.JOINING_QUEUE) for job in jobs):  # all 8 queued first
        assert time.monotonic() < deadline
        time.sleep(0.02)
    extra = [client.submit(handle_file(str(path)), caption, 512, 2, 9, api_name="/explain") for _ in range(4)]
    results = [job.result(timeout=300) for job in jobs]
    first, second = results[:4], results[4:]
    for a, b in zip(first, second):
        assert a[0] == b[0] and _explanation(a) == _explanation(b)
    assert _explanation(first[0]) != _explanation(first[1])  # another seed, other estimates
    refused = []
    for job in extra:
        try:
            job.result(timeout=300)
        except Exception as err:  # gradio_client's QueueError
            refused.append(str(err))
    assert refused and all("Queue is full" in r for r in refused), refused
    assert _peak_rss_mib(url_pid[server]) - before < 1024, "8 concurrent calls grew the server by over 1 GiB"
