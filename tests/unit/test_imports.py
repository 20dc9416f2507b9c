import langchain_seed
from langchain_seed import engine

EXPECTED_ALL = ["ChatSeed", "SamplingParams", "SeedLLM", "SpeculativeConfig", "ToTResult", "TreeOfThoughts",
                "__version__"]
EXPECTED_ENGINE_ALL = ["Constraint", "EngineStats", "FeatureDraftModel", "GenerationBatch", "GenerationResult", "LoadedModels", "RequestHandle", "RequestStats",
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


def test_the_package_and_its_engine_import_where_the_resource_module_does_not_exist():
    """Windows has no `resource`: memory figures come from psutil, which picks its own
    platform code (imported first here: on Linux it uses `resource` itself)."""
    import subprocess
    import sys

    script = ("import sys, psutil\nsys.modules['resource'] = None  # import resource -> ImportError\n"
              "import langchain_seed, langchain_seed.engine\nfrom langchain_seed import SeedLLM, TreeOfThoughts\n"
              "from langchain_seed.engine.stats import current_rss_mb\nassert current_rss_mb() > 0\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
