"""One vLLM engine run in a process of its own (what ``test_vllm_engine.py`` starts each time).

``python engine_run.py REQUEST.json RESULT.json``: REQUEST names the model dir, dtype, prompts
(token ids), ``socket`` (the tierd socket; absent: no connector), ``max_num_batched_tokens``
(chunked prefill when small) and ``corrupt`` (overwrite every block loaded from tierd with noise
after the load: the control that shows loaded blocks are used). RESULT has, per prompt, the
generated tokens, their logprobs and ``num_cached_tokens``, plus the worker connector's counters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BLOCK_SIZE = 32
MAX_TOKENS = 8


def corrupt_loads() -> None:
    """Every block loaded from tierd gets noise instead of its KV."""
    import torch

    from tierd_client.vllm.plan import StepPlan
    from tierd_client.vllm.worker import WorkerSide

    original = WorkerSide.load

    def load(self: WorkerSide, plan: StepPlan) -> None:
        original(self, plan)
        generator = torch.Generator().manual_seed(1)
        for load_ in plan.loads:
            index = torch.tensor(load_.block_ids, dtype=torch.long)
            for layer in self.layers:
                noise = torch.randn(layer[index].shape, generator=generator) * 3
                layer[index] = noise.to(layer.dtype)

    WorkerSide.load = load  # type: ignore[method-assign]


def connector_counters() -> dict[str, int]:
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    if not has_kv_transfer_group():
        return {}
    worker = get_kv_transfer_group()._worker
    return {"blocks_loaded": worker.blocks_loaded, "blocks_saved": worker.blocks_saved,
            "failures": worker.link.failures}


def run(request: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    if request.get("corrupt"):
        corrupt_loads()
    kv_transfer = None
    if request.get("socket"):
        kv_transfer = KVTransferConfig(
            kv_connector="TierdConnector", kv_connector_module_path="tierd_client.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"socket": request["socket"], "model_id": "tiny-llama@test",
                                       "rpc_timeout_s": 2.0, "retry_after_s": 1.0})
    llm = LLM(model=request["model"], dtype=request["dtype"], enforce_eager=True, block_size=BLOCK_SIZE,
              max_model_len=1024, seed=0, kv_transfer_config=kv_transfer,
              max_num_batched_tokens=request.get("max_num_batched_tokens", 1024),
              max_num_seqs=request.get("max_num_seqs", 8))
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=1, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in request["prompts"]], params, use_tqdm=False)
    results = []
    for out in outputs:
        completion = out.outputs[0]
        logprobs = [step[token].logprob for step, token in zip(completion.logprobs, completion.token_ids)]
        results.append({"tokens": list(completion.token_ids), "logprobs": logprobs,
                        "cached": out.num_cached_tokens, "finish": completion.finish_reason})
    return {"outputs": results, "connector": connector_counters()}


if __name__ == "__main__":
    request_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    result = run(json.loads(request_path.read_text()))
    result_path.write_text(json.dumps(result))
