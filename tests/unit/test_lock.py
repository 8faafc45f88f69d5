"""pyproject.toml, uv.lock, its exports in requirements/ and this environment agree.

``make install``, CI and the Docker image install the exported, hashed
``requirements/*.txt``. These tests fail when a dependency changes in either
pyproject.toml without ``make lock``, when an export is edited by hand or left stale, when
the suite runs in an environment that is not exactly the dev lock, and when the code
imports a third-party package its distribution does not declare (or declares one it
never uses). All offline.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
UV = Path(sys.executable).parent / "uv"
LOCAL = {"wallet-platform", "wallet-platform-client"}


def _pyproject(path: Path) -> dict:
    with path.open("rb") as handle:
        return tomllib.load(handle)


# The server distribution's top-level packages, as its pyproject.toml lists them.
_FIND = _pyproject(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]["find"]
SERVER_PACKAGES = [pattern.rstrip("*") for pattern in _FIND["include"]]
CLIENT_SRC = ROOT / "clients" / "python" / "src"
# Declared but never imported by name: psycopg's C speed-up (the [binary] extra) and
# SQLAlchemy's SQLite driver, chosen by URL (sqlite+aiosqlite).
USED_WITHOUT_IMPORT = {"aiosqlite", "psycopg-binary"}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)(?: ; ([^\\]+?))? \\?$")


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every requirement in an export that applies to this machine."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match and (match[3] is None or Marker(match[3]).evaluate()):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def _declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]) for req in requirements}


def test_lock_is_up_to_date_with_both_pyprojects():
    result = subprocess.run(
        [str(UV), "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"run `make lock`:\n{result.stderr}"


def test_make_exports_exactly_the_committed_files():
    makefile = (ROOT / "Makefile").read_text()
    exported = set(re.findall(r"\$\(UV\) export .*-o (requirements/\S+)", makefile))
    committed = {f"requirements/{p.name}" for p in REQUIREMENTS.glob("*.txt")}
    assert exported == committed and len(committed) == 4


@pytest.mark.parametrize("name", ["runtime.txt", "build.txt", "dev.txt", "uv.txt"])
def test_export_is_what_the_lock_exports_now(name: str):
    text = (REQUIREMENTS / name).read_text()
    command = text.splitlines()[1].lstrip("# ").split()
    assert command[:3] == ["uv", "export", "--frozen"], command
    output = command.index("-o")
    del command[output : output + 2]
    fresh = subprocess.run(
        [str(UV), *command[1:], "--quiet"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    body = text.split("\n", 2)[2]
    assert fresh.split("\n", 2)[2] == body, f"requirements/{name} is stale: run `make lock`"


def test_every_export_is_hashed():
    for path in REQUIREMENTS.glob("*.txt"):
        for line in path.read_text().splitlines():
            if PIN.match(line):
                assert line.endswith("\\"), f"{path.name}: {line} has no --hash"


def test_this_environment_is_exactly_the_dev_lock():
    """What `make install` leaves: the dev export's pins and the two local packages."""
    installed: dict[str, str] = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    for local in LOCAL:
        assert installed.pop(local) == "0.1.0", local
    assert installed == _pins(REQUIREMENTS / "dev.txt"), "run `make install`"


def test_runtime_set_has_no_build_test_or_lint_tools():
    runtime = set(_pins(REQUIREMENTS / "runtime.txt"))
    tools = {"grpcio-tools", "mypy-protobuf", "setuptools", "pytest", "cryptography", "ruff"}
    assert not runtime & (tools | {"mypy", "uv", "pip", "pyyaml", "buf-bin", "py-spy"})
    build = set(_pins(REQUIREMENTS / "build.txt"))
    assert {"grpcio-tools", "mypy-protobuf", "setuptools"} <= build
    assert not build & {"pytest", "sqlalchemy", "cryptography"}


def _imported_modules(roots: list[Path]) -> set[str]:
    """Top-level third-party modules imported anywhere under ``roots`` (google.* by part;
    opentelemetry.* whole: its API, SDK and exporters share that namespace package at
    every depth, and each import names the one distribution that installs it)."""
    names = set()
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                    if node.module == "opentelemetry":  # from opentelemetry import trace
                        modules = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for module in modules:
                    parts = module.split(".")
                    if parts[0] == "opentelemetry":
                        names.add(module)
                    else:
                        names.add(".".join(parts[:2]) if parts[0] == "google" else parts[0])
    return {name for name in names if name.split(".")[0] not in sys.stdlib_module_names}


def _installed_files() -> tuple[dict[str, str], dict[Path, str]]:
    """Every installed file -> its distribution, and each editable install's source tree."""
    files: dict[str, str] = {}
    trees: dict[Path, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            files[os.path.normpath(str(dist.locate_file(file)))] = name
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            trees[Path(url.removeprefix("file://"))] = name
    return files, trees


def _distribution_of(module: str, files: dict[str, str], trees: dict[Path, str]) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    location = os.path.normpath(spec.origin or next(iter(spec.submodule_search_locations or [])))
    if location in files:
        return files[location]
    inside = sorted(name for path, name in files.items() if path.startswith(location + os.sep))
    if inside:  # a namespace package (google.rpc): the distribution that fills it
        assert len(set(inside)) == 1, (module, set(inside))
        return inside[0]
    # An editable install: the deepest source tree holding the module (the client's
    # tree lies inside the server's).
    holding = [tree for tree in trees if Path(location).is_relative_to(tree)]
    assert holding, f"no distribution installs {module} ({location})"
    return trees[max(holding, key=lambda tree: len(tree.parts))]


@pytest.mark.parametrize("distribution", ["server", "client"])
def test_imports_and_declared_dependencies_agree(distribution: str):
    if distribution == "server":
        roots = [ROOT / package for package in SERVER_PACKAGES]
        declared = _declared(_pyproject(ROOT / "pyproject.toml")["project"]["dependencies"])
        own = {"wallet-platform"}
    else:
        roots = [CLIENT_SRC / "wallet_client"]
        client = _pyproject(ROOT / "clients/python/pyproject.toml")
        declared = _declared(client["project"]["dependencies"])
        own = {"wallet-platform-client"}
    files, trees = _installed_files()
    modules = _imported_modules(roots)
    imported = {_distribution_of(module, files, trees) for module in modules} - own
    assert imported <= declared, f"imported but not declared: {imported - declared}"
    assert declared - USED_WITHOUT_IMPORT <= imported, f"never imported: {declared - imported}"
