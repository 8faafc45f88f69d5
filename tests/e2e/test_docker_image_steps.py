"""deploy/Dockerfile's install steps, run as written in fresh venvs (no Docker engine here).

Each stage gets an empty venv (the image's Python) and a directory standing for the
image's filesystem. The steps are read from the Dockerfile itself: ``WORKDIR``,
``COPY`` (from the build context, minus what Dockerfile.dockerignore leaves out, or
``--from`` the build stage) and the ``pip`` commands of each ``RUN``, with absolute
paths mapped into that directory. The one liberty: ``--no-cache-dir`` is dropped, so the
machine's pip cache serves the downloads (the flag only keeps the image small).

Then the runtime stage must hold exactly the runtime lock and the two wheels, nothing
to build or test with, and serve: ``wallet-stack`` starts from it and the image's
HEALTHCHECK command passes.
"""

from __future__ import annotations

import fnmatch
import glob
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.stack_process import stack_process
from tests.e2e.venvs import importable, installed, make_venv
from tests.unit.test_lock import _pins

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORED = [
    line.strip()
    for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
BASE_IMAGE_TOOLS = {"pip"}  # the Dockerfile uninstalls the base image's setuptools and wheel


def instructions(text: str) -> list[list[tuple[str, str]]]:
    """Each stage's (instruction, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest.strip()))
    return stages


def _dockerignored(relative: str) -> bool:
    for pattern in IGNORED:
        if pattern.startswith("**/"):
            if fnmatch.fnmatch(Path(relative).name, pattern[3:]):
                return True
        elif fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
            return True
    return False


def _copy_from_context(source: str, target: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(ROOT)
        return {name for name in names if _dockerignored(str(base / name))}

    path = ROOT / source
    assert not _dockerignored(source), f"COPY {source}: excluded by the .dockerignore"
    if path.is_dir():
        shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)


class Stage:
    """One stage: its venv, its filesystem directory, its working directory."""

    def __init__(self, root: Path, name: str) -> None:
        self.fs = root / f"{name}-fs"
        self.fs.mkdir(parents=True)
        self.venv = root / f"{name}-venv"
        self.python = make_venv(self.venv)
        self.workdir = self.fs

    def path(self, path: str) -> Path:
        return self.fs / path.lstrip("/") if path.startswith("/") else self.workdir / path

    def arguments(self, args: list[str]) -> list[str]:
        mapped: list[str] = []
        for arg in args:
            if arg == "--no-cache-dir":
                continue
            if arg.startswith("/"):
                local = str(self.path(arg))
                mapped.extend(sorted(glob.glob(local)) if "*" in arg else [local])
            else:
                mapped.append(arg)
        return mapped

    def run(self, command: str) -> None:
        for step in command.split("&&"):
            words = shlex.split(step)
            if words[0] == "pip":
                pip = [str(self.python), "-m", "pip"]
                done = subprocess.run(
                    [*pip, *self.arguments(words[1:])],
                    cwd=self.workdir,
                    capture_output=True,
                    text=True,
                    timeout=540,
                )
                assert done.returncode == 0, f"{step}\n{done.stdout}{done.stderr}"
            else:  # rm of scratch files, useradd: nothing a venv needs
                assert words[0] in ("rm", "useradd"), step


def build_stages(root: Path) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    for index, stage_instructions in enumerate(instructions(DOCKERFILE.read_text())):
        header = stage_instructions[0][1].split()
        name = header[2] if len(header) == 3 and header[1] == "AS" else f"stage{index}"
        stage = stages[name] = Stage(root, name)
        for keyword, args in stage_instructions[1:]:
            if keyword == "WORKDIR":
                stage.workdir = stage.path(args)
                stage.workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                words = args.split()
                if words[0].startswith("--from="):
                    origin = stages[words[0].removeprefix("--from=")]
                    shutil.copytree(origin.path(words[1]), stage.path(words[2]))
                else:  # COPY SRC... DEST: into DEST/ when it ends with / (or several SRC)
                    *sources, destination = words
                    into = destination.endswith("/") or len(sources) > 1
                    for source in sources:
                        target = stage.path(destination)
                        _copy_from_context(source, target / Path(source).name if into else target)
            elif keyword == "RUN":
                stage.run(args)
    return stages


@pytest.mark.slow
def test_dockerfile_steps_build_a_runtime_of_exactly_the_runtime_lock(tmp_path: Path) -> None:
    stages = build_stages(tmp_path)
    assert list(stages) == ["build", "stage1"]
    runtime = stages["stage1"]

    packages = installed(runtime.python)
    for name in BASE_IMAGE_TOOLS:
        packages.pop(name)
    assert packages.pop("wallet-platform") == "0.1.0"
    assert packages.pop("wallet-platform-client") == "0.1.0"
    assert packages == _pins(ROOT / "requirements" / "runtime.txt")

    absent = ["grpc_tools", "mypy_protobuf", "pytest", "cryptography", "yaml", "tests"]
    present = ["wallet.v1.wallet_pb2_grpc", "wallet_client"]
    assert importable(runtime.python, absent + present, tmp_path) == present

    healthcheck = re.search(r"CMD python -m ([\w.]+\.healthcheck) ", DOCKERFILE.read_text())
    assert healthcheck
    with stack_process(tmp_path, runtime.venv / "bin") as address:
        health = subprocess.run(
            [str(runtime.python), "-m", healthcheck[1], address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0, health.stdout + health.stderr
