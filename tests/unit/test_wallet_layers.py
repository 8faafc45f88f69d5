"""The wallet service's layers stay apart (docs/wallet-service.md, "Layers").

* the domain (``domain``, ``holds``, ``moves``) loads no transport, wire format or
  database library, not even through another module;
* the service layer (``service``, ``queries``) imports none of them itself and no
  protobuf mapping: it speaks domain objects to the adapter;
* every SQL library is imported only under ``wallet_service/adapters/``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wallet_service"
TRANSPORT_AND_STORAGE = ("grpc", "google", "wallet", "sqlalchemy", "psycopg", "aio_pika")
SQL_LIBRARIES = ("sqlalchemy", "psycopg")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def top_levels(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_the_domain_loads_no_transport_or_database_library():
    code = (
        "import sys\n"
        "import wallet_service.domain, wallet_service.holds, wallet_service.moves\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert "wallet_service" in loaded  # the probe really imported the domain
    assert loaded & set(TRANSPORT_AND_STORAGE) == set()


@pytest.mark.parametrize("name", ["service.py", "queries.py"])
def test_the_service_layer_speaks_domain_objects_only(name):
    imports = imported_modules(PACKAGE / name)
    assert top_levels(imports) & set(TRANSPORT_AND_STORAGE) == set()
    assert "wallet_service.messages" not in imports
    assert any(i.startswith("wallet_service.adapters") for i in imports)


def test_sql_libraries_are_imported_only_by_the_adapter():
    outside = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "adapters" not in path.parts and top_levels(imported_modules(path)) & set(SQL_LIBRARIES)
    }
    inside = {
        path.name
        for path in (PACKAGE / "adapters").glob("*.py")
        if top_levels(imported_modules(path)) & set(SQL_LIBRARIES)
    }
    assert outside == set()
    assert {"ledger_sql.py", "pg_move.py", "pg_batch.py", "unit_of_work.py"} <= inside


def test_wallet_service_modules_stay_small():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert "service.py" in sizes and "adapters/store.py" in sizes
    assert {name: lines for name, lines in sizes.items() if lines >= 400} == {}
