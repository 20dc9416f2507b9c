"""langchain-seed: fast Tree-of-Thoughts on local Hugging Face models."""

__version__ = "0.1.0"
