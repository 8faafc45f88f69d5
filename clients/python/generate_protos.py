"""Generate the ``wallet.v1`` package (messages, gRPC stubs, typed stubs) from the protos.

One generator for every caller: ``make proto`` runs this file, and ``setup.py`` calls
:func:`generate` whenever the package is built (wheel, editable install, sdist), so the
protos stay the one source of truth and the generated code is never committed.

Per ``protos/wallet/v1/*.proto`` it writes ``*_pb2.py`` + ``*_pb2.pyi`` (messages and
protoc's own stubs) and ``*_pb2_grpc.py`` + ``*_pb2_grpc.pyi`` (service stubs and
servicers, typed by mypy-protobuf's ``protoc-gen-mypy_grpc``), plus ``py.typed`` so type
checkers read them. Needs grpcio-tools and mypy-protobuf (build requirements).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
GENERATED = SRC / "wallet"
# In the repository the client lives at clients/python/ and the protos at the root.
PROTO_ROOT = HERE.parent.parent / "protos"


def is_generated() -> bool:
    return (GENERATED / "v1" / "__init__.py").exists()


def _plugin(name: str) -> str:
    """A protoc plugin script installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install mypy-protobuf (a build requirement)")
    return found


def _google_rpc_root() -> Path:
    """The folder holding ``google/rpc/status.proto`` (the batch results' error type).

    googleapis-common-protos installs the .proto beside its generated modules, and its
    ``google.rpc.status_pb2`` is what the generated code imports at run time.
    """
    import google.rpc

    root = Path(next(iter(google.rpc.__path__))).parent.parent
    if not (root / "google" / "rpc" / "status.proto").exists():
        raise SystemExit(f"google/rpc/status.proto not found under {root}")
    return root


def generate() -> None:
    """(Re)write ``src/wallet/`` from the protos; keep it as is when there are none.

    No protos means an sdist, which carries the generated code (the protos are outside
    its tree); a tree with neither cannot be built.
    """
    protos = sorted((PROTO_ROOT / "wallet" / "v1").glob("*.proto"))
    if not protos:
        if is_generated():
            return
        raise SystemExit(f"no protos under {PROTO_ROOT} and no generated code in {GENERATED}")

    import grpc_tools
    from grpc_tools import protoc

    shutil.rmtree(GENERATED, ignore_errors=True)  # a removed .proto leaves no module
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    google_rpc = _google_rpc_root()
    out = str(SRC)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{google_rpc}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        "--mypy_grpc_opt=quiet",
        f"--mypy_grpc_out={out}",
        *(str(path.relative_to(PROTO_ROOT)) for path in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + " ".join(str(p) for p in protos))
    for marker in ("__init__.py", "v1/__init__.py", "py.typed"):
        (GENERATED / marker).touch()


if __name__ == "__main__":
    generate()
