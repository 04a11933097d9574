"""A seeded KV-cache request trace, and its JSON-lines file format.

One request per line, in arrival order::

    {"t": 12.5, "session": "chat-3", "tokens": [1, 17, 923, ...]}
    {"t": 12.9, "session": "rag-7", "keys": ["9f2c...", "04ab...", ...]}

``t`` is seconds since the trace began; ``session`` names who sent it (a chat, a RAG job, ...);
each request carries either its prompt's token ids (``tokens``: tierd chains them into page keys
with the namespace's spec) or its page keys already chained (``keys``: 32 hex digits each, the
full pages of the prompt in order, for a trace taken from a running tierd or another engine).

The generator mixes four kinds of traffic, every draw from one ``numpy`` generator seeded by
``TraceShape.seed``:

- chats: a session picks one of the shared system prompts (Zipf-popular), then sends turns; turn
  k's prompt is the system prompt, every earlier user message and answer, and the new message;
- RAG: the most popular system prompt, ``rag_docs`` documents drawn from a pool (Zipf-popular)
  in a random order, and a question: only the part up to the first document in a new place is a
  prefix any earlier request cached;
- one-offs: a fresh random prompt nobody sends again (noise that an LRU keeps);
- arrivals: sessions start as a Poisson process; a chat's turns follow after exponential think
  times, so many sessions are open at once and interleave.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEY_HEX_CHARS = 32
VOCAB = 32000


@dataclass(frozen=True)
class TraceRequest:
    """One prompt: exactly one of ``tokens`` (ids) or ``keys`` (16-byte page keys) is set."""

    time_s: float
    session: str
    tokens: tuple[int, ...] | None = None
    keys: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.keys is None):
            raise ValueError(f"request of session {self.session!r} needs exactly one of tokens or keys")


@dataclass(frozen=True)
class TraceShape:
    """Sizes of a generated trace (tokens unless named otherwise)."""

    seed: int = 0
    chats: int = 60
    rag_jobs: int = 60
    one_offs: int = 40
    system_prompts: int = 4
    system_tokens: tuple[int, int] = (512, 1536)
    turns: tuple[int, int] = (2, 6)
    user_tokens: tuple[int, int] = (32, 160)
    answer_tokens: tuple[int, int] = (64, 320)
    docs: int = 30
    doc_tokens: tuple[int, int] = (256, 768)
    rag_docs: int = 3
    question_tokens: tuple[int, int] = (16, 64)
    one_off_tokens: tuple[int, int] = (256, 1536)
    session_rate_per_s: float = 2.0
    think_s: float = 20.0
    zipf_s: float = 1.1


def _zipf_pick(rng: np.random.Generator, n: int, s: float) -> int:
    weights = 1.0 / np.arange(1, n + 1) ** s
    return int(rng.choice(n, p=weights / weights.sum()))


def _tokens(rng: np.random.Generator, bounds: tuple[int, int]) -> list[int]:
    return rng.integers(1, VOCAB, int(rng.integers(bounds[0], bounds[1] + 1))).tolist()


def generate(shape: TraceShape) -> list[TraceRequest]:
    """The trace ``shape`` describes, in arrival order."""
    rng = np.random.default_rng(shape.seed)
    systems = [_tokens(rng, shape.system_tokens) for _ in range(shape.system_prompts)]
    docs = [_tokens(rng, shape.doc_tokens) for _ in range(shape.docs)]
    kinds = ["chat"] * shape.chats + ["rag"] * shape.rag_jobs + ["once"] * shape.one_offs
    order = rng.permutation(len(kinds))
    starts = np.cumsum(rng.exponential(1.0 / shape.session_rate_per_s, len(kinds)))
    out: list[TraceRequest] = []
    for number, (index, start_s) in enumerate(zip(order, starts)):
        kind = kinds[index]
        name = f"{kind}-{number}"
        if kind == "chat":
            out.extend(_chat(rng, shape, name, float(start_s), systems))
        elif kind == "rag":
            picks = [_zipf_pick(rng, shape.docs, shape.zipf_s) for _ in range(shape.rag_docs)]
            prompt = systems[0] + [t for pick in picks for t in docs[pick]] + _tokens(rng, shape.question_tokens)
            out.append(TraceRequest(float(start_s), name, tuple(prompt)))
        else:
            out.append(TraceRequest(float(start_s), name, tuple(_tokens(rng, shape.one_off_tokens))))
    out.sort(key=lambda request: request.time_s)
    return out


def _chat(rng: np.random.Generator, shape: TraceShape, name: str, start_s: float,
          systems: list[list[int]]) -> Iterator[TraceRequest]:
    history = list(systems[_zipf_pick(rng, len(systems), shape.zipf_s)])
    time_s = start_s
    for _ in range(int(rng.integers(shape.turns[0], shape.turns[1] + 1))):
        history += _tokens(rng, shape.user_tokens)
        yield TraceRequest(time_s, name, tuple(history))
        history += _tokens(rng, shape.answer_tokens)
        time_s += float(rng.exponential(shape.think_s))


def write_jsonl(requests: Iterable[TraceRequest], path: Path) -> None:
    with path.open("w") as out:
        for request in requests:
            line: dict[str, object] = {"t": request.time_s, "session": request.session}
            if request.tokens is not None:
                line["tokens"] = list(request.tokens)
            else:
                line["keys"] = [key.hex() for key in request.keys or ()]
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


def read_jsonl(path: Path) -> list[TraceRequest]:
    """A trace file (format above); ``ValueError`` naming the line for anything else."""
    out: list[TraceRequest] = []
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    out.append(_parse(json.loads(line)))
                except (ValueError, TypeError, KeyError) as exc:
                    raise ValueError(f"{path}:{number}: {exc}") from None
    return sorted(out, key=lambda request: request.time_s)


def _parse(line: dict[str, object]) -> TraceRequest:
    time_s = float(line["t"])  # type: ignore[arg-type]
    session = str(line["session"])
    if "tokens" in line:
        tokens = line["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < 2**32 for t in tokens):
            raise ValueError("tokens must be a list of token ids (integers 0 .. 2**32-1)")
        return TraceRequest(time_s, session, tokens=tuple(tokens))
    keys = line.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) == KEY_HEX_CHARS for k in keys):
        raise ValueError(f"a request needs tokens, or keys as {KEY_HEX_CHARS} hex digits each")
    return TraceRequest(time_s, session, keys=tuple(bytes.fromhex(k) for k in keys))
