"""langchain-seed: fast Tree-of-Thoughts on local Hugging Face models.

Scheduled speculative decoding (SeeD) behind a LangChain LLM, and a Tree-of-Thoughts
runnable that drops in wherever an LLM stood.

The names below are imported on first use, so that `from langchain_seed import
TreeOfThoughts` (ToT over any LangChain LLM, a remote server's included) does not import
torch or transformers; `SeedLLM`, `ChatSeed` and the engine's settings do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ChatSeed": "langchain_seed.lc.chat_models",
    "SamplingParams": "langchain_seed.engine.config",
    "SeedLLM": "langchain_seed.lc.llms",
    "SpeculativeConfig": "langchain_seed.engine.config",
    "ToTResult": "langchain_seed.tot",
    "TreeOfThoughts": "langchain_seed.tot",
}
"""Each public name and the module that defines it."""

__all__ = ["ChatSeed", "SamplingParams", "SeedLLM", "SpeculativeConfig", "ToTResult", "TreeOfThoughts", "__version__"]

if TYPE_CHECKING:
    from langchain_seed.engine.config import SamplingParams, SpeculativeConfig
    from langchain_seed.lc.chat_models import ChatSeed
    from langchain_seed.lc.llms import SeedLLM
    from langchain_seed.tot import ToTResult, TreeOfThoughts


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'langchain_seed' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
