"""The one definition of every option: checks, command-line text, and the engine config using them."""

import pytest

from langchain_seed.engine import SamplingParams, SpeculativeConfig
from langchain_seed.engine.options import OPTIONS, SAMPLING_OPTIONS, SPECULATIVE_OPTIONS


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("k_config", "1,1,1,1", (1, 1, 1, 1)),
        ("k_config", "2, 2,1", (2, 2, 1)),
        ("draft_confidence", "0.4", 0.4),
        ("temperature", "0", 0.0),
        ("top_p", "0.9", 0.9),
        ("max_tokens", "64", 64),
        ("seed", "none", None),
        ("seed", "7", 7),
        ("decoding", "speculative", "speculative"),
        ("stop_token_ids", "2,3", (2, 3)),
        ("ignore_eos", "true", True),
    ],
)
def test_command_line_text(name, text, value):
    assert OPTIONS[name].from_text(text) == value


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("k_config", "1,0", "k_config entries must be positive ints"),
        ("k_config", "1,x", "k_config must be a sequence"),
        ("k_config", "", "k_config must be a sequence"),
        ("draft_confidence", "1", "draft_confidence must be a number in \\[0, 1\\)"),
        ("draft_confidence", "high", "draft_confidence must be a number in .*; got 'high'"),
        ("max_tokens", "0", "max_tokens must be a positive int; got 0"),
        ("max_tokens", "many", "max_tokens must be a positive int; got 'many'"),
        ("temperature", "nan", "temperature must be a finite number in"),
        ("verify", "all", "verify must be one of 'rounds', 'batched'"),
        ("n", "65", "n \\(generations per prompt\\) must be an int in \\[1, 64\\]"),
    ],
)
def test_bad_command_line_text_names_the_option(name, text, message):
    with pytest.raises(ValueError, match=message):
        OPTIONS[name].from_text(text)


def test_engine_config_defaults_and_checks_come_from_the_options():
    config, params = SpeculativeConfig(), SamplingParams()
    assert all(getattr(config, name) == OPTIONS[name].default for name in SPECULATIVE_OPTIONS)
    assert all(getattr(params, name) == OPTIONS[name].default for name in SAMPLING_OPTIONS if name != "max_tokens")
    assert params.max_tokens == 128  # the engine's own default (the LangChain field's is 256)
    for field_name, bad in (("draft_confidence", 1.5), ("prompt_lookup", 9), ("compact_slack", -1)):
        with pytest.raises(ValueError, match=f"^{field_name} must be"):
            SpeculativeConfig(**{field_name: bad})
    for field_name, bad in (("top_p", 0), ("seed", -1), ("stop_token_ids", "ab"), ("ignore_eos", 1)):
        with pytest.raises(ValueError, match=f"^{field_name} must be"):
            SamplingParams(**{field_name: bad})
    assert SamplingParams(stop_token_ids=[2, 3]).stop_token_ids == (2, 3)
