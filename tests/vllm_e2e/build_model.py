"""A tiny random-weight Llama and a BPE tokenizer trained here, both from a fixed seed (no hub)."""

from __future__ import annotations

from pathlib import Path

VOCAB = 512
WORDS = ["cache", "page", "token", "layer", "block", "tier", "disk", "memory", "prefix", "engine",
         "model", "request", "prompt", "reuse", "lease", "slot", "daemon", "vector", "attention"]


def build(out: Path, seed: int = 0) -> Path:
    """Writes the model (fp32 weights: vLLM casts them to the run's dtype) and tokenizer to ``out``."""
    import random

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(400)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():  # larger than the default init: outputs depend on the KV
            param.normal_(0.0, 0.2)
    model.save_pretrained(out)
    return out
