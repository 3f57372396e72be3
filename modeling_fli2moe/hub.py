"""Pushing checkpoints to the Hugging Face Hub (with `huggingface_hub`).

`check_checkpoint_dir` checks that a folder is a complete checkpoint with its model card (written by
`model_card.write_model_card`); `push_checkpoint` validates a checkpoint folder and uploads it in one commit
(`HfApi.create_commit`, the boundary tests patch).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, HFValidationError, filter_repo_objects, validate_repo_id

from .integrity import verify_checkpoint, weight_files

logger = logging.getLogger(__name__)

IGNORE_PATTERNS = [
    "checkpoint-*",  # Trainer's intermediate checkpoints (fnmatch's * also matches '/')
    "runs/*",
    "*/runs/*",  # TensorBoard logs
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "*.pt",
    "*.pth",
    "global_step*",  # DeepSpeed states
    "trainer_state.json",
    "run.json",  # the local run record (command, host, pid)
    ".fli2moe.lock",
    ".tmp-checkpoint-*",
    "training_args.bin",  # a pickle: not loaded by from_pretrained, flagged by the Hub's scanner
    "__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints/*",
]
DEFAULT_COMMIT_MESSAGE = "Upload FL-I2MoE checkpoint"


def _remote_code_files(auto_map: Mapping[str, Any]) -> list[str]:
    """The `.py` files named by `auto_map` (`"module.Class"`, `"repo--module.Class"` or lists of them)."""
    files: set[str] = set()
    for ref in auto_map.values():
        for item in ref if isinstance(ref, (list, tuple)) else [ref]:
            if not isinstance(item, str) or "." not in item:
                continue
            module = item.split("--")[-1].rsplit(".", 1)[0]
            files.add(module.replace(".", "/") + ".py")
    return sorted(files)


def check_checkpoint_dir(checkpoint_dir: str | os.PathLike) -> list[str]:
    """Check that a folder is a pushable checkpoint; return the required files it has.

    The checkpoint itself is checked by `integrity.verify_checkpoint`, the one check of a checkpoint folder
    (`config.json`, the weights there and intact, `config.json` as they were saved with). A push also needs the
    model card (`README.md` with valid YAML) and, for `trust_remote_code`, an `auto_map` in `config.json` and the
    remote-code `.py` files it names. Missing files raise one `FileNotFoundError` naming every problem and how
    to fix it; damaged or edited files raise `CheckpointError`.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {root} does not exist; train one with `fli2moe train` or save a model with "
            "model.save_pretrained(folder)"
        )
    problems: list[str] = []
    try:
        verify_checkpoint(root)
    except FileNotFoundError as err:  # no config.json or weights: named together with what the push lacks
        problems.append(str(err))
    resave = "re-save the model with model.save_pretrained(folder) after `import modeling_fli2moe`"

    auto_map: Mapping[str, Any] = {}
    if (root / "config.json").is_file():  # valid JSON: verify_checkpoint refuses one that is not
        auto_map = json.loads((root / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
        if not auto_map:
            problems.append(
                "config.json has no auto_map, so the checkpoint would not load with trust_remote_code=True: " + resave
            )

    readme = root / "README.md"
    if not readme.is_file():
        problems.append(
            "README.md (the model card) is missing: write it with modeling_fli2moe.model_card.write_model_card(folder, "
            "config=model.config, test_metrics=..., dataset_name=...)"
        )
    else:
        try:
            ModelCard.load(readme)
        except Exception as err:  # noqa: BLE001 - any parse failure means the card's YAML is unusable
            problems.append(f"README.md has invalid YAML metadata ({err}): rewrite it with write_model_card")

    code_files = _remote_code_files(auto_map)
    for name in code_files:
        if not (root / name).is_file():
            problems.append(f"remote-code file {name} (named in config.json auto_map) is missing: {resave}")

    if problems:
        raise FileNotFoundError(
            f"checkpoint folder {root} cannot be pushed:\n- " + "\n- ".join(problems)
        )
    index = "model.safetensors.index.json"
    weights = ([index] if (root / index).is_file() else []) + weight_files(root)
    return ["config.json", *weights, "README.md", *code_files]


def checkpoint_files(checkpoint_dir: str | os.PathLike) -> list[str]:
    """The files of a checkpoint folder that `push_checkpoint` uploads (relative paths, `IGNORE_PATTERNS` applied)."""
    root = Path(checkpoint_dir).expanduser().resolve()
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS + list(DEFAULT_IGNORE_PATTERNS)))


def push_checkpoint(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    api: HfApi | None = None,
) -> str:
    """Validate a checkpoint folder, create the model repo if needed and upload the folder in one commit.

    Weights, config, remote code, processor files and the model card are uploaded; optimizer / scheduler /
    RNG states, `checkpoint-*` folders and `runs/` logs are not (`IGNORE_PATTERNS`). The folder goes up as a
    single `HfApi.create_commit` (the same file selection as `upload_folder`; the card's YAML is checked
    locally, not by the Hub's validation endpoint). Returns the commit URL.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"push_checkpoint: invalid repo_id {repo_id!r} ({err}); use 'user-or-org/model-name'") from err
    check_checkpoint_dir(checkpoint_dir)
    root = Path(checkpoint_dir).expanduser().resolve()
    files = checkpoint_files(root)
    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(root / rel)) for rel in files]
    api = api if api is not None else HfApi(token=token)
    repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    logger.info("pushing %d files of %s to %s", len(files), root, repo_url)
    info = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message,
        repo_type="model",
        token=token,
    )
    return str(getattr(info, "commit_url", info))


__all__ = ["DEFAULT_COMMIT_MESSAGE", "IGNORE_PATTERNS", "check_checkpoint_dir", "checkpoint_files", "push_checkpoint"]
