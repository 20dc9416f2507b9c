"""Drafters propose the draft tree of every active sequence; the target only verifies.

- `base`: the `Drafter` protocol the scheduler relies on, and a sequence's `Draft`;
- `model`: `ModelDrafter`, a small causal LM drafting for a lane in batched forwards;
- `feature`: `FeatureDrafter`, the EAGLE-style draft that also reads the target's features;
- `ngram`: prompt lookup (`NGramIndex`, `PromptLookup`), the model-free proposer;
- `depth`: `DraftDepth`, how deep drafts are worth verifying, learnt from verification.
"""

from langchain_seed.engine.drafters.base import Draft, Drafter
from langchain_seed.engine.drafters.depth import DraftDepth
from langchain_seed.engine.drafters.feature import FeatureDrafter
from langchain_seed.engine.drafters.model import ModelDrafter
from langchain_seed.engine.drafters.ngram import NGramIndex, PromptLookup

__all__ = ["Draft", "DraftDepth", "Drafter", "FeatureDrafter", "ModelDrafter", "NGramIndex", "PromptLookup"]
