"""llama.cpp decoding for the benchmark's peer, and the worker process that runs it.

- `LlamaCppDecoder`: one llama.cpp context on a GGUF; greedy decoding of token ids, one
  prompt at a time, reusing the previous prompt's prefix in the KV cache (llama-cpp-python's
  default, like ``llama-server``'s ``cache_prompt``); it counts its decode calls (forwards).
- `serve` (``python -m langchain_seed.bench.peer_worker --gguf PATH ...``): the decoder in a
  process of its own, answering JSON lines on stdin/stdout (`langchain_seed.bench.peers.
  LlamaCppWorker` is the other end). It imports llama-cpp-python and nothing else of weight:
  no torch, whose OpenMP threads and the harness's other threads would otherwise share
  llama.cpp's process (docs/BENCHMARKS.md, "llama.cpp as a peer").

The protocol, one JSON object a line: the worker first answers ``{"ready": {settings}}`` or
``{"error": why, "unavailable": true}``; then each request ``{"prompts": [[ids]],
"max_tokens": n, "eos": [ids], "stop": [strings]}`` gets ``{"outputs": [[ids]], "forwards":
n, "evaluated_tokens": n, "peak_rss_mb": mb}`` or ``{"error": why}``; ``{"forget": true}``
gets ``{"forgotten": true}`` once the next prompt can reuse nothing of the earlier ones (the
harness asks before each timed call, as it asks every method: `bench.methods.Method.
forget_prompts`). It ends at the end of its input. Stop strings are found in llama.cpp's own
detokenization of the new tokens (as ``llama-server`` does); the caller cuts the text with
the target's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from langchain_seed.bench.process_memory import status_mb

CONTEXT_TOKENS = 4096
"""llama.cpp context size: prompt plus new tokens, at most."""
GREEDY = {"top_k": 1, "top_p": 1.0, "min_p": 0.0, "temp": 0.0, "repeat_penalty": 1.0}
"""llama-cpp-python's sampling arguments for greedy decoding (its sampler chain picks the argmax)."""


def _counting_llama(llama_cpp: Any) -> type:
    """``llama_cpp.Llama`` counting its decode calls (`Llama.eval` decodes ``n_batch`` tokens
    per call) and the tokens it evaluates."""

    class CountingLlama(llama_cpp.Llama):
        decode_calls = evaluated_tokens = 0

        def eval(self, tokens: Sequence[int]) -> None:
            self.decode_calls += math.ceil(len(tokens) / self.n_batch)
            self.evaluated_tokens += len(tokens)
            super().eval(tokens)

    return CountingLlama


class LlamaCppDecoder:
    """Greedy llama.cpp decoding of token ids on one context (one prompt at a time).

    ``forwards`` counts llama.cpp decode calls: one per ``n_batch`` (512) prompt tokens not
    reused from the previous prompt, and one per new token after the first. Raises
    ImportError when llama-cpp-python is not installed.
    """

    def __init__(self, gguf: str | os.PathLike, threads: int = 2, context_tokens: int = CONTEXT_TOKENS,
                 flash_attn: bool = True) -> None:
        import llama_cpp

        self.gguf, self.context_tokens = Path(gguf), context_tokens
        self.settings = {"threads": threads, "context_tokens": context_tokens, "flash_attn": flash_attn}
        self._llama = _counting_llama(llama_cpp)(model_path=str(gguf), n_ctx=context_tokens, n_threads=threads,
                                                 n_threads_batch=threads, flash_attn=flash_attn, verbose=False)

    @property
    def forwards(self) -> int:
        """llama.cpp decode calls so far."""
        return int(self._llama.decode_calls)

    @property
    def evaluated_tokens(self) -> int:
        """Tokens llama.cpp has run through the model so far (prompt tokens it reused not included)."""
        return int(self._llama.evaluated_tokens)

    def forget_prompts(self) -> None:
        """Keep nothing of the earlier prompts: the next one is evaluated from its first token."""
        self._llama.reset()

    def generate(self, prompt_ids: Sequence[int], max_tokens: int,
                 stop: Callable[[list[int]], bool] | None = None) -> list[int]:
        """Up to ``max_tokens`` greedy new ids after ``prompt_ids``; ends after the token
        for which ``stop(new ids so far)`` is true (e.g. an EOS)."""
        if not prompt_ids:
            raise ValueError("llama.cpp needs at least one prompt token")
        if len(prompt_ids) + max_tokens > self.context_tokens:
            raise ValueError(f"{len(prompt_ids)} prompt tokens + {max_tokens} new tokens exceed llama.cpp's "
                             f"context of {self.context_tokens}")
        new_ids: list[int] = []
        if max_tokens < 1:
            return new_ids
        for token in self._llama.generate([int(t) for t in prompt_ids], **GREEDY):
            new_ids.append(int(token))
            if len(new_ids) >= max_tokens or (stop is not None and stop(new_ids)):
                break
        return new_ids

    def stop_rule(self, eos_ids: Sequence[int], stop: Sequence[str]) -> Callable[[list[int]], bool]:
        """True once the last new id is an EOS, or llama.cpp's text of the new ids (special
        tokens left out) holds a stop string. Called after each new id of a generation (it
        starts over when ``new_ids`` has one id); each token is detokenized once."""
        eos, strings = frozenset(int(i) for i in eos_ids), [s for s in stop if s]
        longest = max((len(s) for s in strings), default=0)
        pieces: list[bytes] = []

        def stopped(new_ids: list[int]) -> bool:
            if new_ids[-1] in eos:
                return True
            if not strings:
                return False
            if len(new_ids) == 1:
                pieces.clear()
            searched = len(b"".join(pieces).decode("utf-8", errors="ignore"))
            pieces.append(self._llama.detokenize(new_ids[-1:], special=False))
            text = b"".join(pieces).decode("utf-8", errors="ignore")
            return any(s in text[max(0, searched - longest + 1):] for s in strings)

        return stopped

    def close(self) -> None:
        """Free the llama.cpp context and model."""
        self._llama.close()


# ------------------------------------------------------------------------------ the worker


def _peak_rss_mb() -> float:
    return status_mb("VmHWM")  # its own peak, not the harness's it was forked from (`process_memory`)


def _answer(request: dict[str, Any], decoder: LlamaCppDecoder) -> dict[str, Any]:
    if request.get("forget"):
        decoder.forget_prompts()
        return {"forgotten": True}
    max_tokens = int(request["max_tokens"])
    stop = decoder.stop_rule(request.get("eos", []), request.get("stop", []))
    forwards, evaluated = decoder.forwards, decoder.evaluated_tokens
    outputs = [decoder.generate(ids, max_tokens, stop) for ids in request["prompts"]]
    return {"outputs": outputs, "forwards": decoder.forwards - forwards,
            "evaluated_tokens": decoder.evaluated_tokens - evaluated, "peak_rss_mb": round(_peak_rss_mb(), 1)}


def serve(decoder_factory: Callable[[], LlamaCppDecoder], requests: TextIO, replies: TextIO) -> None:
    """Load the decoder, say ready (or why not), then answer each request line until the input ends."""

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        decoder = decoder_factory()
    except ImportError as error:
        reply({"error": f"llama-cpp-python is not installed ({error})", "unavailable": True})
        return
    except (OSError, ValueError, RuntimeError) as error:
        reply({"error": f"llama.cpp could not load the GGUF: {error}", "unavailable": True})
        return
    reply({"ready": {**decoder.settings, "gguf": str(decoder.gguf), "pid": os.getpid()}})
    try:
        for line in requests:
            if not line.strip():
                continue
            try:
                reply(_answer(json.loads(line), decoder))
            except (ValueError, KeyError, TypeError) as error:
                reply({"error": f"{type(error).__name__}: {error}"})
    finally:
        decoder.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="llama.cpp peer worker: JSON lines on stdin/stdout")
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-tokens", type=int, default=CONTEXT_TOKENS)
    parser.add_argument("--no-flash-attn", dest="flash_attn", action="store_false")
    args = parser.parse_args(argv)
    # the replies get the real stdout to themselves; anything a library prints goes to stderr
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(lambda: LlamaCppDecoder(args.gguf, args.threads, args.context_tokens, args.flash_attn),
          sys.stdin, replies)


if __name__ == "__main__":
    main()
