"""Another worker process, for the cross-process tests: over tierd's byte path it restores the
pages of one prompt (saved by the test process) and saves those of another.

    python hf_worker.py SOCKET DTYPE OUT_FILE RESTORE_SEED SAVE_SEED PROMPT_TOKENS

``OUT_FILE`` (torch.save): ``restored_tokens``, ``restored_logits`` (of the tokens after the
restored prefix of the RESTORE_SEED prompt) and ``reference_logits`` (of the SAVE_SEED prompt's
tokens after its restorable prefix, from this process's own cache).
"""

from __future__ import annotations

import sys

import torch
from hf_models import DTYPES, PAGE_TOKENS, REVISION, forward, prefix_copy, prompt_ids, tiny_model

from tierd_client import ClientOptions, TierClient
from tierd_client.hf import restore_prefix, save_prefix, spec_for


def main(argv: list[str]) -> int:
    socket, dtype, out_file, restore_seed, save_seed, prompt_tokens = argv
    model = tiny_model(DTYPES[dtype])
    length = int(prompt_tokens)
    with TierClient(socket, ClientOptions(local_data_path=False)) as client:
        ns = client.register(spec_for(model, page_tokens=PAGE_TOKENS, revision=REVISION))
        ids = prompt_ids(length, int(restore_seed))
        cache, info = restore_prefix(client, ns, model, ids)
        restored_logits, _ = forward(model, ids[:, info.tokens:], cache)
        ids = prompt_ids(length, int(save_seed))
        _, full = forward(model, ids)
        saved = save_prefix(client, ns, full, ids)
        kept = (length - 1) // PAGE_TOKENS * PAGE_TOKENS  # what a restore of this prompt gives
        reference_logits, _ = forward(model, ids[:, kept:], prefix_copy(full, kept))
    torch.save({"restored_tokens": info.tokens, "restored_logits": restored_logits,
                "reference_logits": reference_logits, "pages_stored": saved.pages_stored}, out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
