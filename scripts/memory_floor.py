"""What the default pair's process holds after loading, step by step (issue 22's memory goal).

Usage: python scripts/memory_floor.py

In this fresh interpreter it imports, step by step, what the engine needs short of a
transformers model class (torch; langchain_core, transformers' top level and cache_utils,
tokenizers, the GGUF reader), reads the default target's tensors as the GGUF holds them,
builds its tokenizer and imports `langchain_seed.lc.llms`, printing the resident size
(VmRSS) after each step and whether sympy, torch._dynamo or transformers.modeling_utils
are loaded; then, in a fresh interpreter of its own, `SeedLLM.from_default()` as the product
loads it, and after one short invocation. The product builds the engine's own Llama
modules (`engine.llama`), so none of those three should be loaded on its lines: importing a
transformers model class (or its config, or `AutoTokenizer`, which reads the config) costs
~90 MB. Needs the default pair in the cache (`langchain-seed models`).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from langchain_seed.bench.process_memory import status_mb  # the standard library only: nothing heavy before step 1

HEAVY = ("sympy", "torch._dynamo", "transformers.modeling_utils")

PRODUCT = """
import sys
from langchain_seed.bench.process_memory import status_mb
from langchain_seed import SeedLLM
llm = SeedLLM.from_default()
heavy = [name for name in {heavy!r} if name in sys.modules]
print(f"{{status_mb('VmRSS'):.0f}} {{','.join(heavy) or '-'}}")
llm.invoke("Q: What is 12 times 7? A:", max_tokens=32)
heavy = [name for name in {heavy!r} if name in sys.modules]
print(f"{{status_mb('VmHWM'):.0f}} {{','.join(heavy) or '-'}}")
"""


def _line(step: str) -> None:
    heavy = [name for name in HEAVY if name in sys.modules]
    print(f"{status_mb('VmRSS'):7.0f} MB  {step}  (loaded: {', '.join(heavy) or 'none of ' + ', '.join(HEAVY)})")


def main() -> None:
    _line("a fresh interpreter")
    importlib.import_module("torch")
    _line("import torch")
    for name in ("langchain_core.language_models", "transformers", "transformers.cache_utils", "tokenizers",
                 "langchain_seed.engine.weights.gguf_file"):
        importlib.import_module(name)
    _line("+ langchain_core, transformers (top level), cache_utils, tokenizers, the GGUF reader")
    import torch

    from langchain_seed.engine.models import find_gguf
    from langchain_seed.engine.weights.gguf_file import read_index, read_tensor
    from langchain_seed.pair.paths import TARGET_NAME, cache_dir

    target = cache_dir() / "models" / TARGET_NAME
    gguf = find_gguf(target)
    if gguf is None:
        raise SystemExit(f"no GGUF in {target}: run `langchain-seed models` first")
    tensors = [torch.from_numpy(read_tensor(gguf, info).copy()) for info in read_index(gguf)]
    size = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    _line(f"+ the target's tensors as the GGUF holds them ({size:.0f} MB)")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(target)
    _line(f"+ the tokenizer ({type(tokenizer).__name__})")
    importlib.import_module("langchain_seed.lc.llms")
    _line("+ langchain_seed.lc.llms")
    done = subprocess.run([sys.executable, "-c", PRODUCT.format(heavy=HEAVY)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    (rss, heavy), (peak, heavy_after) = (line.split() for line in done.stdout.splitlines()[-2:])
    print(f"{float(rss):7.0f} MB  SeedLLM.from_default() in a fresh interpreter  (loaded: {heavy})")
    print(f"{float(peak):7.0f} MB  its peak (VmHWM) after one 32-token invocation  (loaded: {heavy_after})")


if __name__ == "__main__":
    main()
