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


def test_tree_of_thoughts_imports_without_torch():
    """A ToT user on a remote LLM needs neither torch nor transformers (fresh interpreter)."""
    import subprocess
    import sys

    script = ("import sys\nfrom langchain_seed import TreeOfThoughts, ToTResult\n"
              "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
              "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_unknown_names_are_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="NoSuchThing"):
        langchain_seed.NoSuchThing  # noqa: B018
