"""Deploy a built Space folder for real and time each step (the slow test tests/test_space_deploy.py).

`fli2moe space build` from a small checkpoint, a fresh virtual environment, `pip install -r
requirements.txt` from inside the folder (its wheel plus this machine's package registry), `python
app.py` from inside the folder, one /explain call through gradio_client, and a click-through in
headless Chromium. Prints the seconds per step; the page's screenshot goes to
outputs/screenshots/space-deployed.png and the times to outputs/space_deploy_times.json.

    .venv/bin/python bench/space_deploy.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    times = ROOT / "outputs" / "space_deploy_times.json"
    times.unlink(missing_ok=True)
    rc = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-s", "-m", "slow", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_space_deploy.py::test_built_space_deploys_in_a_fresh_venv")],
        cwd=ROOT,
    )
    if times.is_file():
        print("\nseconds per step:")
        for step, seconds in json.loads(times.read_text()).items():
            print(f"  {step:<34} {seconds:>7.1f}")
    print(f"screenshot: {ROOT / 'outputs' / 'screenshots' / 'space-deployed.png'}" if rc == 0 else "the deployment failed")
    return rc


if __name__ == "__main__":
    sys.exit(main())
