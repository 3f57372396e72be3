"""Build and push a self-contained Gradio Space for an FL-I2MoE checkpoint.

`build_space(checkpoint, out)` writes a folder that deploys as it is on Hugging Face Spaces:

- ``app.py``: the app (a copy of ``spaces_app/app.py``), which reads the checkpoint named in
  ``fli2moe_space.json`` next to it (or the ``FLI2MOE_CHECKPOINT`` variable);
- ``README.md``: the Space header (``sdk: gradio`` with the installed gradio version pinned, ``models:``
  naming the checkpoint, ``preload_from_hub`` for Hub ids) and a short description;
- ``requirements.txt``: torch (CPU build), every dependency of this package pinned to the versions
  installed here, gradio, and this package as a wheel built into ``wheels/``;
- ``checkpoint/``: a copy of the checkpoint when it is a local folder (a Hub id is downloaded by the
  Space at build time through ``preload_from_hub``).

`push_space(out, repo_id)` uploads such a folder with `huggingface_hub` (`create_repo` of a gradio
Space, then `upload_folder`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .integrity import verify_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["SPACE_FILE", "build_space", "push_space", "check_space_dir", "source_root"]

#: The file next to app.py naming the checkpoint (a folder relative to it, or a Hub id).
SPACE_FILE = "fli2moe_space.json"
CHECKPOINT_DIR = "checkpoint"
WHEELS_DIR = "wheels"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Distribution names whose import is provided elsewhere or is not needed in a Space.
_SKIP_REQUIREMENTS = {"fl-i2moe"}
_SPACE_IGNORE = ["__pycache__/*", "*/__pycache__/*", "*.pyc", ".ipynb_checkpoints/*"]


def source_root() -> Path:
    """The fl-i2moe source tree this module runs from (with ``pyproject.toml`` and ``spaces_app/app.py``)."""
    root = Path(__file__).resolve().parent.parent
    missing = [p for p in ("pyproject.toml", "spaces_app/app.py") if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`fli2moe space build` needs the fl-i2moe source tree (it builds this package's wheel and copies "
            f"spaces_app/app.py), but {', '.join(missing)} is missing under {root}. Run it from a clone of the "
            "repository installed with `pip install -e .`."
        )
    return root


def _is_local(checkpoint: str) -> bool:
    return Path(checkpoint).expanduser().exists() or checkpoint.startswith((".", "/", "~"))


def _check_checkpoint(checkpoint: str) -> tuple[str, Path | None]:
    """('local', path) or ('hub', None), with a clear error for anything else."""
    if _is_local(checkpoint):
        path = Path(checkpoint).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder {path} does not exist; train one with `fli2moe train`")
        verify_checkpoint(path)  # config.json, the weights there and intact, before they are copied into the Space
        return "local", path
    try:
        validate_repo_id(checkpoint)
    except HFValidationError as err:
        raise ValueError(
            f"--checkpoint {checkpoint!r} is neither an existing folder nor a Hub model id ('user/model'): {err}"
        ) from None
    logger.info("%s is not a local folder: building for the Hub checkpoint of that id", checkpoint)
    return "hub", None


def _pinned(dist: str) -> str:
    try:
        return f"{dist}=={metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        raise RuntimeError(
            f"{dist} is not installed here, so the Space's requirements cannot pin the version it was tested with; "
            f"pip install {dist} (or `pip install -e .[space]`) and build again"
        ) from None


def _requirement_name(req: str) -> str:
    for sep in ("[", "=", "<", ">", "!", "~", ";", " ", "@"):
        req = req.split(sep, 1)[0]
    return req.strip()


def requirements(root: Path, wheel_name: str, *, cpu_torch: bool = True) -> list[str]:
    """The Space's requirements: torch first, this package's dependencies pinned to the installed versions,
    gradio, then the wheel of this package (installed without resolving its dependencies again)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    deps = [_requirement_name(d) for d in project.get("dependencies", [])]
    deps = [d for d in deps if d.lower() not in _SKIP_REQUIREMENTS and d.lower() != "torch"]
    lines = [f"--extra-index-url {TORCH_CPU_INDEX}"] if cpu_torch else []
    lines += ["torch==2.13.0", *sorted({_pinned(d) for d in deps}, key=str.lower), _pinned("gradio")]
    lines.append(f"./{WHEELS_DIR}/{wheel_name}")
    return lines


def build_wheel(root: Path, wheel_dir: Path) -> Path:
    """Build this package's wheel from a clean copy of the source (no stale build/ files) into `wheel_dir`."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fli2moe-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        shutil.copytree(
            root / "modeling_fli2moe", src / "modeling_fli2moe",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(src)]
        try:
            import setuptools  # noqa: F401

            cmd.insert(4, "--no-build-isolation")  # offline: build with the setuptools installed here
        except ImportError:
            pass
        logger.info("building the fl-i2moe wheel: %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the fl-i2moe wheel failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    wheels = sorted(wheel_dir.glob("fl_i2moe-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip wheel wrote no fl_i2moe wheel into {wheel_dir}")
    return wheels[-1]


def _encoder_repos(config: dict) -> list[str]:
    """Hub ids of the encoders the checkpoint names (for preload_from_hub); the encoders that ship in
    PyPI wheels (MiniLM, EfficientNet-Lite0) need none."""
    from .encoders import MINILM_NAME
    from .model_card import _base_models

    return [r for r in _base_models(list(config.get("modalities") or [])) if r != MINILM_NAME]


BODY = """# FL-I2MoE explainer

Upload an image and a caption and see how an FL-I2MoE model's experts (one uniqueness expert per
modality, a synergy expert, a redundancy expert) use them: the prediction, the router weights, token
highlights and image heatmaps per expert, the top synergistic (Shapley interaction) and redundant
(redundancy gap) word-region pairs with standard errors, and the effect of masking those pairs
against random pairs. The explanation downloads as JSON. The main action is also an API:
`api_name="/explain"`, taking the image and the caption as its first two inputs.

This folder was written by `fli2moe space build` and runs anywhere as it is:
`pip install -r requirements.txt && python app.py` (from this folder: requirements.txt names the
bundled wheel by a relative path). `app.py` reads the checkpoint from the `FLI2MOE_CHECKPOINT`
variable when it is set, else from `fli2moe_space.json`.
"""


def _readme(checkpoint: str, kind: str, config: dict, model_id: str | None) -> str:
    gradio_version = metadata.version("gradio")
    models = [checkpoint] if kind == "hub" else [model_id] if model_id else []
    preload = ([checkpoint] if kind == "hub" else []) + _encoder_repos(config)
    header = [
        "---",
        "title: FL-I2MoE explainer",
        "emoji: 🔍",
        "colorFrom: indigo",
        "colorTo: red",
        "sdk: gradio",
        f"sdk_version: {gradio_version}",
        'python_version: "3.11"',
        "app_file: app.py",
        "pinned: false",
        "license: apache-2.0",
    ]
    if models:
        header += ["models:", *[f"  - {m}" for m in models]]
    if preload:
        header += ["preload_from_hub:", *[f"  - {m}" for m in preload]]
    header += ["tags:", "  - interpretability", "  - multimodal", "  - mixture-of-experts", "---", ""]
    where = (
        f"This Space runs the checkpoint `{checkpoint}` (downloaded at build time by `preload_from_hub`)."
        if kind == "hub"
        else "This Space runs the checkpoint in `checkpoint/` (copied in by `fli2moe space build`"
        + (f" from `{model_id}`)." if model_id else ").")
    )
    return "\n".join(header) + "\n" + BODY + "\n" + where + "\n"


def _copy_checkpoint(path: Path, dest: Path) -> list[str]:
    from .hub import checkpoint_files

    files = checkpoint_files(path)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path / rel, target)
    return files


def build_space(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    cpu_torch: bool = True,
    model_id: str | None = None,
) -> Path:
    """Write a self-contained Space folder for `checkpoint` (a local folder or a Hub id) at `out`.

    Refuses an existing non-empty `out` unless `overwrite=True`. The folder is assembled next to `out`
    and moved into place at the end, so a failed build leaves `out` as it was. `cpu_torch=False` leaves
    out the CPU torch index (GPU hardware installs the CUDA build). `model_id`: the Hub id a local
    checkpoint was pushed to, for the README's `models:` link (a Hub checkpoint names itself). Returns `out`.
    """
    if model_id is not None:
        try:
            validate_repo_id(model_id)
        except HFValidationError as err:
            raise ValueError(f"--model-id {model_id!r} is not a Hub model id ('user/model'): {err}") from None
    checkpoint = os.fspath(checkpoint)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {out} already exists and is not empty; pass --overwrite to replace it, or choose another folder"
        )
    kind, path = _check_checkpoint(checkpoint)
    root = source_root()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-building-", dir=out.parent))
    try:
        if kind == "local":
            files = _copy_checkpoint(path, stage / CHECKPOINT_DIR)
            config = json.loads((path / "config.json").read_text())
            target = CHECKPOINT_DIR
            logger.info("copied %d checkpoint files from %s", len(files), path)
        else:
            config = {}
            try:
                from huggingface_hub import hf_hub_download

                config = json.loads(Path(hf_hub_download(checkpoint, "config.json")).read_text())
            except Exception as err:  # noqa: BLE001 - the encoders' preload entries are optional
                logger.info("could not read %s/config.json here (%s); preloading only the checkpoint", checkpoint, err)
            target = checkpoint
        shutil.copy2(root / "spaces_app" / "app.py", stage / "app.py")
        wheel = build_wheel(root, stage / WHEELS_DIR)
        (stage / "requirements.txt").write_text("\n".join(requirements(root, wheel.name, cpu_torch=cpu_torch)) + "\n")
        (stage / "README.md").write_text(_readme(checkpoint, kind, config, model_id), encoding="utf-8")
        (stage / SPACE_FILE).write_text(json.dumps({"checkpoint": target, "source": checkpoint}, indent=2) + "\n")
        (stage / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.whl filter=lfs diff=lfs merge=lfs -text\n")
        stage.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    logger.info("Space folder written to %s", out)
    return out


def check_space_dir(folder: str | os.PathLike) -> Path:
    """Check that `folder` looks like a built Space (app.py, requirements.txt, README with `sdk: gradio`)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Space folder {root} does not exist; make it with `fli2moe space build`")
    problems = [f"{n} is missing" for n in ("app.py", "requirements.txt", "README.md") if not (root / n).is_file()]
    if (root / "README.md").is_file():
        head = (root / "README.md").read_text(encoding="utf-8")
        if not head.startswith("---") or "sdk: gradio" not in head.split("---", 2)[1]:
            problems.append("README.md has no Space header with `sdk: gradio`")
    if problems:
        raise FileNotFoundError(
            f"{root} is not a Space folder ({'; '.join(problems)}); rebuild it with `fli2moe space build`"
        )
    return root


def push_space(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload FL-I2MoE Space",
    api: HfApi | None = None,
) -> str:
    """Create the gradio Space `repo_id` if needed and upload `folder` to it; returns the commit URL."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid --repo-id {repo_id!r} ({err}); use 'user-or-org/space-name'") from None
    root = check_space_dir(folder)
    api = api if api is not None else HfApi(token=token)
    url = api.create_repo(repo_id, token=token, private=private, repo_type="space", space_sdk="gradio", exist_ok=True)
    logger.info("uploading %s to %s", root, url)
    info = api.upload_folder(
        folder_path=str(root),
        repo_id=repo_id,
        repo_type="space",
        token=token,
        commit_message=commit_message,
        ignore_patterns=_SPACE_IGNORE,
    )
    return str(getattr(info, "commit_url", info))
