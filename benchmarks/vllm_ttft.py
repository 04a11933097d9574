#!/usr/bin/env python3
"""Time to first token of a vLLM engine with the tierd connector against the same engine without.

Random-weight Llama-like model (built here with a fixed seed, no hub), CPU vLLM 0.32, each engine
in a process of its own (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). For each prompt length: TTFT with
no connector; engine A stores the prompts; engine B's TTFT with the pages in tierd's dram, then
after a tierd restart (pages from disk only); and with the connector but no reuse at all (fresh
prompts: the lookup misses and the saves are the only cost). Each figure is the median over
``--reps`` distinct prompts of a length. Ratios are no-connector / B (higher is better) and
no-reuse / no-connector (1.00 = no overhead). Run in ``make test-vllm``'s venv::

    .venv-vllm/bin/python benchmarks/vllm_ttft.py              # 1K and 4K tokens, ~5 min on 2 cores
    .venv-vllm/bin/python benchmarks/vllm_ttft.py --quick      # a small model, 256 and 1K tokens
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_NO_USAGE_STATS": "1",
       "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
VOCAB = 2048
TIERD_CONFIG = """
device = "cpu"
log_level = "warning"
[hbm]
capacity = "16MiB"
[dram]
capacity = "{dram}"
[disk]
capacity = "{disk}"
fsync = false
[store]
write_policy = "write_back"
prefault = true
shm_prefix = "tdbench{pid}"
acquire_timeout_s = 30.0
"""


def build_model(out: Path, layers: int, hidden: int, heads: int, kv_heads: int) -> None:
    """A Llama-like checkpoint with random weights and a trivial word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0", bos_token="w1",
                            eos_token="w2").save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False, torch_dtype="float32")
    LlamaForCausalLM(config).save_pretrained(out)


def prompts(lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(n)] for n in lengths]


def engine(request: dict[str, Any]) -> dict[str, Any]:
    """One engine run (in this process): TTFT in seconds of each prompt, one at a time."""
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    kv = None
    if request["socket"]:
        kv = KVTransferConfig(kv_connector="TierdConnector", kv_connector_module_path="tierd_client.vllm",
                              kv_role="kv_both", kv_load_failure_policy="recompute",
                              kv_connector_extra_config={"socket": request["socket"], "model_id": "bench@0",
                                                         "acquire_timeout_s": 30.0, "rpc_timeout_s": 30.0})
    llm = LLM(model=request["model"], dtype="float32", enforce_eager=True, block_size=request["block_size"],
              max_model_len=max(len(p) for p in request["prompts"]) + 64, seed=0, kv_transfer_config=kv,
              max_num_batched_tokens=8192, max_num_seqs=1)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    llm.generate([{"prompt_token_ids": [5, 6, 7, 8] * 8}], params, use_tqdm=False)  # warm up
    ttft, cached = [], []
    for prompt in request["prompts"]:
        start = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
        ttft.append(time.perf_counter() - start)
        cached.append(out.num_cached_tokens)
    return {"ttft_s": ttft, "cached": cached}


def run_engine(work: Path, name: str, request: dict[str, Any]) -> dict[str, Any]:
    req, res = work / f"{name}.json", work / f"{name}.out.json"
    req.write_text(json.dumps(request))
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO)}
    with open(work / f"{name}.log", "wb") as log:
        subprocess.run([sys.executable, __file__, "--engine", str(req), str(res)], env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = json.loads(res.read_text())
    return result


class Daemon:
    """A tierd process on a temp socket; ``restart`` keeps its data dir (pages on disk only)."""

    def __init__(self, work: Path, dram: str, disk: str) -> None:
        self.work = work
        self.socket = str(work / "tierd.sock")
        (work / "tierd.toml").write_text(TIERD_CONFIG.format(dram=dram, disk=disk, pid=os.getpid()))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.work / "tierd.log", "ab")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen([sys.executable, "-m", "tierd", "--config", str(self.work / "tierd.toml"),
                                      "--socket", self.socket, "--data-dir", str(self.work / "data")],
                                     stdout=log, stderr=subprocess.STDOUT)
        from tierd_client import TierClient, TierdRpcError
        with TierClient(self.socket) as client:
            for _ in range(600):
                try:
                    if client.health(timeout_s=1.0):
                        return
                except TierdRpcError:
                    pass  # not listening yet
                time.sleep(0.1)
        raise RuntimeError(f"tierd did not start: see {self.work / 'tierd.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # flushes dirty pages to disk
            self.proc.wait(timeout=120)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = work / "model"
    build_model(model, args.layers, args.hidden, args.heads, args.kv_heads)
    # ``reps`` distinct prompts per length (a repeat of one prompt would hit vLLM's own cache).
    lengths = [n for n in args.lengths for _ in range(args.reps)]
    reused, fresh = prompts(lengths, 1), prompts(lengths, 2)
    daemon = Daemon(work, args.dram, args.disk)
    daemon.start()
    base = {"model": str(model), "block_size": args.block_size}
    try:
        plain = run_engine(work, "plain", {**base, "socket": None, "prompts": reused + fresh})
        run_engine(work, "a", {**base, "socket": daemon.socket, "prompts": reused})
        dram = run_engine(work, "b-dram", {**base, "socket": daemon.socket, "prompts": reused})
        daemon.stop()
        daemon.start()
        disk = run_engine(work, "b-disk", {**base, "socket": daemon.socket, "prompts": reused})
        miss = run_engine(work, "no-reuse", {**base, "socket": daemon.socket, "prompts": fresh})
    finally:
        daemon.stop()
    n = len(lengths)

    def medians(values: list[float]) -> list[float]:
        return [statistics.median(values[i:i + args.reps]) for i in range(0, len(values), args.reps)]

    return {"lengths": args.lengths, "reps": args.reps, "plain": medians(plain["ttft_s"][:n]),
            "plain_fresh": medians(plain["ttft_s"][n:]), "dram": medians(dram["ttft_s"]),
            "disk": medians(disk["ttft_s"]), "no_reuse": medians(miss["ttft_s"]),
            "cached_dram": dram["cached"][::args.reps], "cached_disk": disk["cached"][::args.reps],
            "cached_no_reuse": miss["cached"][::args.reps]}


def table(r: dict[str, Any]) -> str:
    lines = [f"median TTFT of {r['reps']} prompts per length",
             "tokens  no-conn s  B dram s  B disk s  no-reuse s   x dram  x disk  no-reuse/no-conn",
             "------  ---------  --------  --------  ----------  -------  ------  ----------------"]
    for i, n in enumerate(r["lengths"]):
        lines.append(f"{n:6d}  {r['plain'][i]:9.3f}  {r['dram'][i]:8.3f}  {r['disk'][i]:8.3f}  "
                     f"{r['no_reuse'][i]:10.3f}  {r['plain'][i] / r['dram'][i]:6.1f}x  "
                     f"{r['plain'][i] / r['disk'][i]:5.1f}x  {r['no_reuse'][i] / r['plain_fresh'][i]:16.3f}")
    lines.append(f"cached tokens: dram {r['cached_dram']}, disk {r['cached_disk']}, "
                 f"no reuse {r['cached_no_reuse']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model, 256 and 1024 tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--block-size", type=int, default=128, help="vLLM's block size (tokens, multiple of 32)")
    parser.add_argument("--reps", type=int, default=3, help="prompts per length; TTFTs are their median")
    args = parser.parse_args(argv)
    quick = args.quick
    args.lengths = [256, 1024] if quick else [1024, 4096]
    args.layers, args.hidden, args.heads, args.kv_heads = (4, 512, 8, 4) if quick else (8, 1024, 16, 8)
    args.dram, args.disk = ("256MiB", "1GiB") if quick else ("1GiB", "4GiB")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--engine"]:
        Path(argv[2]).write_text(json.dumps(engine(json.loads(Path(argv[1]).read_text()))))
        return 0
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tdttft-", dir="/tmp"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
