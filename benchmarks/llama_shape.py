"""The shape of a Llama-style decoder the benchmarks build with random weights (no model hub)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

DEFAULT_INIT_RANGE = 0.02  # transformers' own default for Llama


@dataclass(frozen=True)
class ModelShape:
    """A Llama-shaped decoder: sizes of its layers (random weights)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int

    def config(self, max_tokens: int, init_range: float = DEFAULT_INIT_RANGE) -> LlamaConfig:
        """``max_tokens``: the longest sequence it runs; ``init_range``: the weights' std."""
        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden,
                           intermediate_size=self.intermediate, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           max_position_embeddings=max_tokens, initializer_range=init_range)

    def describe(self) -> str:
        return (f"Llama-shaped, random weights: {self.layers} layers, hidden {self.hidden}, "
                f"{self.heads} heads ({self.kv_heads} KV, head dim {self.hidden // self.heads}), "
                f"MLP {self.intermediate}, vocab {self.vocab}")
