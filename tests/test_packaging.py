"""The wheel holds every package of the tree under its import name, and the CUDA C sources."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Import name -> folder, as pyproject.toml's package-dir maps them.
PACKAGE_ROOTS = {"tierd": REPO / "tierd", "tierd_client": REPO / "clients" / "tierd_client",
                 "tierd_kernels": REPO / "kernels"}


def tree_packages() -> set[str]:
    found = set()
    for name, root in PACKAGE_ROOTS.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, timeout=600)
    return zipfile.ZipFile(next(out.glob("tierd-*.whl")))


def test_the_wheel_has_every_package_of_the_tree(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    packaged = {name.removesuffix("/__init__.py").replace("/", ".") for name in names
                if name.endswith("/__init__.py")}
    assert packaged == tree_packages()


def test_the_wheel_ships_the_cuda_sources(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sources = {f"tierd_kernels/csrc/{p.name}" for p in (REPO / "kernels" / "csrc").iterdir()
               if p.suffix in (".cu", ".cuh")}
    assert sources and sources <= names
    assert "tierd/v1/tierd_pb2.pyi" in names
