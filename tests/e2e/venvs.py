"""Fresh virtual environments for tests that install this repository's packages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def make_venv(path: Path) -> Path:
    """An empty venv at ``path`` (pip only); its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def installed(python: Path) -> dict[str, str]:
    """Normalised distribution name -> version, as pip lists them in that venv."""
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(listed)}


def importable(python: Path, modules: list[str], cwd: Path) -> list[str]:
    """Which of ``modules`` that venv's python can import (run outside the repository)."""
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = subprocess.run(
        [str(python), "-c", probe, *modules], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(found.replace("'", '"')))
