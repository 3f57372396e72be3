"""The record a training run leaves in its output folder (`run.json`): what trained a checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RUN_FILE", "read_run_record", "run_dataset_section"]

RUN_FILE = "run.json"


def read_run_record(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The parsed `run.json` of a checkpoint folder, or {} when it is missing or unreadable."""
    try:
        record = json.loads((Path(checkpoint) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def run_dataset_section(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The `dataset` section of the run that trained a checkpoint folder, or {}."""
    config = read_run_record(checkpoint).get("config")
    section = config.get("dataset") if isinstance(config, dict) else None
    return dict(section) if isinstance(section, dict) else {}
