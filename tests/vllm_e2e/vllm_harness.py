"""What the vLLM engine tests share: the prompts, a tierd daemon sized for them, and one engine
run per process (``engine_run.py``), memoized per name so a test reuses what another ran."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
from e2e_daemon import REPO_ROOT, TierdProcess  # noqa: E402

BLOCK_SIZE = 32
ENGINE_TIMEOUT_S = 300
# Lengths: whole blocks plus a tail, one exactly 3 blocks (only 2 may be reported cached: vLLM
# must compute the last prompt token itself), one long enough for several prefill chunks of 64.
PROMPT_LENGTHS = (200, 150, 96, 230)
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
              "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}


def prompts(seed: int = 0, vocab: int = 512) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in PROMPT_LENGTHS]


def expected_cached(prompt_lengths: tuple[int, ...] = PROMPT_LENGTHS) -> list[int]:
    """Tokens the connector may report: full blocks, never the last prompt token."""
    return [(n - 1) // BLOCK_SIZE * BLOCK_SIZE for n in prompt_lengths]


def tierd_config(shm_prefix: str) -> str:
    return f"""
device = "cpu"
log_level = "info"
[hbm]
capacity = "8MiB"
[dram]
capacity = "16MiB"
[disk]
capacity = "128MiB"
fsync = false
[store]
write_policy = "write_back"
prefault = false
shm_prefix = "{shm_prefix}"
acquire_timeout_s = 10.0
flush_timeout_s = 30.0
"""


@dataclass
class EngineTierd(TierdProcess):
    """A daemon with room for both dtypes' pages in dram (the connector's tier)."""

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.config_path.write_text(tierd_config(self.shm_prefix))
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERD_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tierd", "--config", str(self.config_path),
                 "--socket", str(self.socket_path), "--data-dir", str(self.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work_dir)
        self._wait_serving()


@dataclass
class Engines:
    """Runs ``engine_run.py`` in a new process per call; ``runs`` keeps every result by name."""

    work_dir: Path
    model_dir: Path
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, name: str, *, dtype: str, socket: Path | None, corrupt: bool = False,
            max_num_batched_tokens: int = 1024, max_num_seqs: int = 8, seed: int = 0,
            multiprocessing: bool = False) -> dict[str, Any]:
        """``multiprocessing``: vLLM's default process layout (engine core and worker in
        processes of their own, as the OpenAI server runs), else everything in one process."""
        if name in self.runs:
            return self.runs[name]
        request = {"model": str(self.model_dir), "dtype": dtype, "prompts": prompts(seed),
                   "socket": None if socket is None else str(socket), "corrupt": corrupt,
                   "max_num_batched_tokens": max_num_batched_tokens, "max_num_seqs": max_num_seqs}
        request_path = self.work_dir / f"{name}.request.json"
        result_path = self.work_dir / f"{name}.result.json"
        log_path = self.work_dir / f"{name}.log"
        request_path.write_text(json.dumps(request))
        env = {**os.environ, **ENGINE_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if multiprocessing else "0"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(log_path, "wb") as log:
            done = subprocess.run([sys.executable, str(HERE / "engine_run.py"), str(request_path),
                                   str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  timeout=ENGINE_TIMEOUT_S, cwd=self.work_dir, check=False)
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise AssertionError(f"engine run {name} exited with {done.returncode}:\n{tail}")
        result: dict[str, Any] = json.loads(result_path.read_text())
        result["log"] = log_path.read_text(errors="replace")
        self.runs[name] = result
        return result
