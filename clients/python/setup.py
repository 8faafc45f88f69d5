"""Build hook: generate the ``wallet.v1`` package before packaging (generate_protos.py).

Everything else about the distribution is in pyproject.toml; only the package list (it
includes the generated ``wallet`` package, which does not exist before the first build)
and the command hooks live here.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info
from setuptools.command.sdist import sdist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_protos import generate, is_generated


class EggInfoWithProtos(egg_info):
    """Metadata needs the package directories to exist: generate them if missing."""

    def run(self) -> None:
        if not is_generated():
            generate()
        super().run()


class BuildPyWithProtos(build_py):
    """Every build packages code generated from the protos as they are now."""

    def run(self) -> None:
        generate()
        super().run()


class SdistWithProtos(sdist):
    def run(self) -> None:
        generate()
        super().run()


setup(
    package_dir={"": "src"},
    packages=["wallet", "wallet.v1", "wallet_client"],
    package_data={"wallet": ["py.typed", "v1/*.pyi"], "wallet_client": ["py.typed"]},
    cmdclass={
        "egg_info": EggInfoWithProtos,
        "build_py": BuildPyWithProtos,
        "sdist": SdistWithProtos,
    },
)
