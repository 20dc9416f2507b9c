"""langchain-seed: fast Tree-of-Thoughts on local Hugging Face models.

Scheduled speculative decoding (SeeD) behind a LangChain LLM, and a Tree-of-Thoughts
runnable that drops in wherever an LLM stood.
"""

from langchain_seed.chat_models import ChatSeed
from langchain_seed.engine.config import SamplingParams, SpeculativeConfig
from langchain_seed.llms import SeedLLM
from langchain_seed.tot import ToTResult, TreeOfThoughts

__version__ = "0.1.0"

__all__ = [
    "ChatSeed",
    "SamplingParams",
    "SeedLLM",
    "SpeculativeConfig",
    "ToTResult",
    "TreeOfThoughts",
    "__version__",
]
