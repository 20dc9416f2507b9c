"""The decoding engine: autoregressive, speculative and scheduled (SeeD) decoding.

It knows nothing of LangChain: token ids in, token ids and statistics out.
"""

from langchain_seed.engine.config import SamplingParams, SpeculativeConfig
from langchain_seed.engine.constraints import Constraint
from langchain_seed.engine.engine import GenerationBatch, SeedEngine
from langchain_seed.engine.feature_draft import FeatureDraftModel
from langchain_seed.engine.models import LoadedModels, check_pair, load_model, load_models
from langchain_seed.engine.request import GenerationResult, RequestHandle
from langchain_seed.engine.stats import EngineStats, RequestStats, RunStats

__all__ = [
    "Constraint",
    "EngineStats",
    "FeatureDraftModel",
    "GenerationBatch",
    "GenerationResult",
    "LoadedModels",
    "RequestHandle",
    "RequestStats",
    "RunStats",
    "SamplingParams",
    "SeedEngine",
    "SpeculativeConfig",
    "check_pair",
    "load_model",
    "load_models",
]
