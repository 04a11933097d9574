"""``make demo`` (``python -m tierd_client.hf.demo``): four chat turns of a transformers model over tierd.

A Llama-shaped model with random weights (built from a config with a fixed seed) and a BPE
tokenizer trained here on the built-in text (``demo_text``): nothing comes from a model hub. The
same four user turns run twice. Part 1, prefix reuse: ``tiered_generation`` restores the pages of
everything said before and prefills only the new turn. Part 2, the paged worker: the same model
with the ``tierd_paged`` attention, whose K/V live in tierd's hbm pages. Each turn prints the
tokens that came from tierd, the tier they came from and the time to first token next to a
recompute of the whole prompt by plain ``generate``; then ``tierctl stats``.

The daemon is the one ``tierctl`` would talk to (``make run``'s ``var/tierd.sock``, systemd's, or
``$TIERD_SOCKET``) when it serves, else a private one for the demo's lifetime (``--own-daemon``
forces that). Pages stay in a shared daemon: a second run starts from the first one's.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

from tierd.tier import Tier
from tierd_client import tierctl
from tierd_client.hf.demo_daemon import demo_daemon
from tierd_client.hf.demo_text import ASSISTANT_TAG, CORPUS, SPECIAL_TOKENS, SYSTEM, SYSTEM_TAG, USER_TAG, USER_TURNS
from tierd_client.hf.generation import tiered_generation
from tierd_client.hf.paged import ATTENTION_NAME, PagedOptions, PagedWorker, register_paged_attention
from tierd_client.sync import TierClient

SEED = 0
VOCAB = 512         # the built-in text fills exactly this many BPE tokens
PAGE_TOKENS = 16
# The weights' revision, which a locally built model must name (spec_for). Part 2 pages under a
# label of its own so that it starts cold and shows its own reuse; with Part 1's label it would
# start from Part 1's pages (both derive one spec, so one namespace).
REVISION = "tierd-demo-seed0"
PAGED_REVISION = REVISION + "-paged"
REPLY_CHARS = 40
# Wider than transformers' 0.02: random weights at 0.02 repeat one token, and their top two logits
# lie close enough that rounding (paged attention vs sdpa) could swap them.
INIT_STD = 0.2


@dataclass(frozen=True)
class DemoSize:
    """The model's sizes (head_dim 64: the smallest the paged kernels take), the reply length and
    how much of the system prompt is used (None: all of it)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    reply_tokens: int
    system_tokens: int | None = None

    def describe(self) -> str:
        return (f"{self.layers} layers, hidden {self.hidden}, {self.heads} heads ({self.kv_heads} KV, "
                f"head dim {self.hidden // self.heads}), MLP {self.intermediate}")


FULL = DemoSize(layers=8, hidden=512, heads=8, kv_heads=2, intermediate=1536, reply_tokens=24)
QUICK = DemoSize(layers=2, hidden=128, heads=2, kv_heads=2, intermediate=256, reply_tokens=8, system_tokens=200)


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE trained on ``CORPUS`` (deterministic), with the chat tags as special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB:
        raise RuntimeError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, not {VOCAB}")
    return tokenizer


def build_models(size: DemoSize) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """``(sdpa_model, paged_model)``: the same seeded random weights, fp32, eval mode."""
    register_paged_attention()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.kv_heads, head_dim=size.hidden // size.heads,
                         max_position_embeddings=4096, initializer_range=INIT_STD)
    config._attn_implementation = "sdpa"  # the reference: transformers' own attention
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    # A config of its own: switching the paged model's attention must not switch the other's.
    paged_config = copy.deepcopy(config)
    paged_config._attn_implementation = ATTENTION_NAME
    paged = LlamaForCausalLM(paged_config)
    paged.load_state_dict(model.state_dict())
    for m in (model, paged):
        # No pad token in a random model: generate would warn on every call without one.
        m.generation_config.pad_token_id = m.generation_config.eos_token_id
        torch.nn.Module.eval(m)
    return model, paged


class FirstToken(BaseStreamer):
    """Notes when ``generate`` hands over the first new token (its first ``put`` is the prompt);
    the clock starts when it is made."""

    def __init__(self) -> None:
        self.started_s = time.perf_counter()
        self.ms: float | None = None
        self._puts = 0

    def put(self, value: torch.Tensor) -> None:
        self._puts += 1
        if self._puts == 2 and self.ms is None:
            self.ms = (time.perf_counter() - self.started_s) * 1e3

    def end(self) -> None:
        return None


@dataclass(frozen=True)
class Recompute:
    """Plain ``generate`` of one token: its TTFT and the token."""

    ms: float
    token: int


class Baseline:
    """Recomputes of whole prompts by the sdpa model, once per distinct prompt."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model
        self._done: dict[tuple[int, ...], Recompute] = {}

    def __call__(self, prompt: Sequence[int]) -> Recompute:
        key = tuple(prompt)
        if key not in self._done:
            ids = torch.tensor([list(prompt)])
            clock = FirstToken()
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                      do_sample=False, streamer=clock)
            assert clock.ms is not None
            self._done[key] = Recompute(clock.ms, int(out[0, -1]))
        return self._done[key]


class Chat:
    """The conversation's token ids: the system prompt, then each turn's user text and reply."""

    def __init__(self, tokenizer: Tokenizer, size: DemoSize) -> None:
        self.tokenizer = tokenizer
        self.system: list[int] = tokenizer.encode(SYSTEM_TAG + SYSTEM).ids[:size.system_tokens]

    def user(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(f"\n{USER_TAG}{text}\n{ASSISTANT_TAG}").ids
        return ids

    def text(self, ids: Sequence[int]) -> str:
        """A reply as one short printable line (random weights say nothing sensible, and their
        byte tokens need not make UTF-8)."""
        text = "".join(c if c.isprintable() and c != "\ufffd" else "." for c in
                       " ".join(str(self.tokenizer.decode(list(ids))).split()))
        return repr(text if len(text) <= REPLY_CHARS else text[:REPLY_CHARS - 3] + "...")


def tiers_text(pages_by_tier: Mapping[Tier, int]) -> str:
    return ", ".join(f"{tier.label}: {n} page{'s' if n > 1 else ''}"
                     for tier, n in sorted(pages_by_tier.items())) or "-"


def turn_line(turn: int, prompt: int, verb: str, from_tierd: int, tiers: str, ttft_ms: float,
              base: Recompute, first_token: int) -> str:
    """One turn: what came from tierd, from where, and the TTFT next to a recompute's."""
    same = "=" if first_token == base.token else "!="
    return (f"  turn {turn}: {prompt} prompt tokens: {from_tierd} {verb} from tierd ({tiers}), "
            f"{prompt - from_tierd} computed; TTFT {ttft_ms:.1f} ms, recompute {base.ms:.1f} ms: "
            f"{base.ms / ttft_ms:.1f}x; first token {same} recompute's")


def part1(client: TierClient, model: LlamaForCausalLM, chat: Chat, size: DemoSize, baseline: Baseline,
          out: Callable[[str], None]) -> list[list[int]]:
    """Prefix reuse through ``tiered_generation``; the replies, turn by turn."""
    replies: list[list[int]] = []
    history = list(chat.system)
    with tiered_generation(client, model, page_tokens=PAGE_TOKENS, revision=REVISION) as gen:
        out(f"part 1: prefix reuse, tiered_generation (namespace {gen.spec.model})")
        for turn, text in enumerate(USER_TURNS, 1):
            prompt = history + chat.user(text)
            base = baseline(prompt)
            clock = FirstToken()
            ids = gen.generate(torch.tensor([prompt]), max_new_tokens=size.reply_tokens, do_sample=False,
                               streamer=clock)
            reply = [int(t) for t in ids[0, len(prompt):]]
            restore = gen.last_restore
            assert clock.ms is not None and restore is not None
            out(turn_line(turn, len(prompt), "restored", restore.tokens, tiers_text(restore.pages_by_tier),
                          clock.ms, base, reply[0]))
            out(f"    reply, {len(reply)} tokens: {chat.text(reply)}")
            replies.append(reply)
            history = prompt + reply
    return replies


def part2(client: TierClient, paged: LlamaForCausalLM, chat: Chat, size: DemoSize, baseline: Baseline,
          part1_replies: list[list[int]], out: Callable[[str], None]) -> None:
    """The same turns through ``PagedWorker``: what each request reused of the pages before."""
    worker = PagedWorker(client, paged, PagedOptions(page_tokens=PAGE_TOKENS, revision=PAGED_REVISION))
    out(f"part 2: the paged worker, PagedWorker (namespace {worker.spec.model}; attention {ATTENTION_NAME} "
        "over hbm pages)")
    worker.generate(chat.system[:PAGE_TOKENS // 2], 1)  # the first forward of a model is slow: untimed
    history = list(chat.system)
    for turn, (text, expected) in enumerate(zip(USER_TURNS, part1_replies), 1):
        prompt = history + chat.user(text)
        base = baseline(prompt)
        # Where the pages a request would pin are now (its Acquire moves them up to hbm).
        found = client.lookup_result(worker.ns, worker.ns.keys(prompt[:-1])).tiers
        started = time.perf_counter()
        with worker.begin(prompt) as request:
            first = int(request.last_logits.argmax())
            ttft_ms = (time.perf_counter() - started) * 1e3
            reply = request.greedy(size.reply_tokens)
        pages = Counter(found[:request.reused_tokens // PAGE_TOKENS])
        out(turn_line(turn, len(prompt), "reused", request.reused_tokens, tiers_text(pages), ttft_ms, base, first))
        same = "=" if reply == expected else "!="
        out(f"    reply, {len(reply)} tokens ({same} part 1's): {chat.text(reply)}; "
            f"{request.committed_pages} pages committed")
        history = prompt + reply


def shown(socket: str) -> str:
    """``socket`` as one would type it here: relative when under the current dir (``make run``'s
    ``var/tierd.sock`` in the checkout)."""
    path = Path(socket)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else socket


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tierd_client.hf.demo", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--socket", default=None, help="the daemon to use (default: tierctl's, if it serves, "
                                                      "else a private one)")
    parser.add_argument("--own-daemon", action="store_true", help="start a private daemon even if one serves")
    parser.add_argument("--quick", action="store_true", help="a tiny model and a short system prompt (seconds)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a busy machine more stall a small forward)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Run the demo; lines go to ``out``. Exit status 0, or tierctl's when its stats fail."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, out)
    finally:
        torch.set_num_threads(threads)  # main may run inside another program (a test)


def _run(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    size = QUICK if args.quick else FULL
    tokenizer = train_tokenizer()
    model, paged = build_models(size)
    chat = Chat(tokenizer, size)
    baseline = Baseline(model)
    out(f"model: Llama-shaped, random weights (seed {SEED}): {size.describe()}, vocab {VOCAB} (BPE trained "
        f"here on {len(CORPUS)} characters), float32; pages of {PAGE_TOKENS} tokens; torch "
        f"{torch.__version__}, {args.threads} thread{'s' if args.threads > 1 else ''}")
    with torch.no_grad():
        baseline(chat.system[:PAGE_TOKENS // 2])  # the first generate of a process is slow: untimed
        with demo_daemon(args.socket, args.own_daemon) as daemon:
            whose = "private, for this run" if daemon.private else "already running"
            out(f"tierd: {shown(daemon.socket)} ({whose})")
            with TierClient(daemon.socket) as client:
                replies = part1(client, model, chat, size, baseline, out)
                part2(client, paged, chat, size, baseline, replies, out)
            out(f"$ tierctl --socket {shown(daemon.socket)} stats")
            table = io.StringIO()
            status = tierctl.main(["--socket", daemon.socket, "stats"], out=table)
            for line in table.getvalue().rstrip("\n").split("\n"):
                out(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
