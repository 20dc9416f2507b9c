import langchain_seed
from langchain_seed import engine

EXPECTED_ALL = ["ChatSeed", "SamplingParams", "SeedLLM", "SpeculativeConfig", "ToTResult", "TreeOfThoughts",
                "__version__"]
EXPECTED_ENGINE_ALL = ["FeatureDraftModel", "GenerationBatch", "GenerationResult", "LoadedModels", "RequestHandle", "RequestStats",
                       "RunStats", "SamplingParams", "SeedEngine", "SpeculativeConfig", "check_pair", "load_model",
                       "load_models"]


def test_all_is_pinned():
    assert sorted(langchain_seed.__all__) == sorted(EXPECTED_ALL)
    assert sorted(engine.__all__) == sorted(EXPECTED_ENGINE_ALL)
    for name in EXPECTED_ALL:
        assert getattr(langchain_seed, name) is not None
