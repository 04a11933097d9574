"""Fixtures of the vLLM engine tests (``make test-vllm``; skipped where vLLM is not installed)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _vllm_installed() -> bool:
    """A real vLLM, not the ``tests/clients/vllm`` folder, which pytest's path makes look like a
    namespace package named ``vllm`` (one has no origin)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


if not _vllm_installed():
    collect_ignore_glob = ["test_*.py"]  # the main suite's venv has no vLLM: `make test-vllm`
else:
    from build_model import build
    from vllm_harness import Engines, EngineTierd

    @pytest.fixture(scope="session")
    def work_dir() -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix="tierd-vllm-", dir="/tmp"))  # short: unix sockets
        yield path
        shutil.rmtree(path, ignore_errors=True)

    @pytest.fixture(scope="session")
    def tierd(work_dir: Path) -> Iterator[EngineTierd]:
        daemon = EngineTierd(work_dir / "tierd")
        daemon.work_dir.mkdir()
        daemon.start()
        yield daemon
        daemon.stop()
        daemon.cleanup()

    @pytest.fixture(scope="session")
    def engines(work_dir: Path) -> Engines:
        return Engines(work_dir, build(work_dir / "model"))
