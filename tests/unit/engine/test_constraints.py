"""Constrained decoding: schema-valid output in every mode, greedy identity with constrained
autoregressive decoding, constrained and free requests in one round, bad constraints refused.

The models are the tiny random pair over the tiny byte-level BPE tokenizer (tests/unit/conftest.py):
random weights write nonsense, so every valid output below is the grammar's doing.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_seed.engine import Constraint, SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.constraints import TokenMasks

PROMPT_TEXT = "Question: what is 12 + 30? Answer:"

SCHEMAS = {
    "nested-object": {
        "type": "object",
        "properties": {
            "person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                                        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                       "required": ["name", "age"], "additionalProperties": False},
            "ok": {"type": "boolean"},
        },
        "required": ["person", "ok"], "additionalProperties": False,
    },
    "array-of-enums": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 4},
    "bounded-numbers": {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": -1.5, "maximum": 2.5},
                       "count": {"type": "integer", "exclusiveMinimum": 3, "maximum": 9}},
        "required": ["score", "count"], "additionalProperties": False,
    },
    "optional-fields": {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                       "note": {"type": "string", "maxLength": 5}, "when": {"enum": ["now", "later"]}},
        "required": ["id"], "additionalProperties": False,
    },
}

MODES = {
    "autoregressive": ("autoregressive", None),
    "speculative-chain": ("speculative", SpeculativeConfig(k_config=(1, 1, 1))),
    "speculative-tree": ("speculative", SpeculativeConfig(k_config=(2, 2, 1))),
    "scheduled-batched-chain": ("scheduled", SpeculativeConfig(k_config=(1, 1, 1, 1))),
    "scheduled-rounds-tree": ("scheduled", SpeculativeConfig(k_config=(2, 1, 1), verify="rounds")),
    "scheduled-adaptive": ("scheduled", SpeculativeConfig(k_config=(1, 1, 1, 1), draft_confidence=0.4)),
}


@pytest.fixture(scope="module")
def engine(tiny_target, tiny_draft, tiny_tokenizer):
    engine = SeedEngine(tiny_target, tiny_draft, tiny_tokenizer)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompt(engine):
    return engine.tokenizer.encode(PROMPT_TEXT)


def decode(engine, result) -> str:
    return engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def generate(engine, prompts, params, mode_name):
    mode, config = MODES[mode_name]
    return engine.generate(prompts, params, mode=mode, config=config)


@pytest.mark.parametrize("schema_name", list(SCHEMAS))
def test_greedy_output_is_schema_valid_and_identical_in_every_mode(engine, prompt, schema_name):
    schema = SCHEMAS[schema_name]
    params = SamplingParams(max_tokens=120, constraint=Constraint.json_schema(schema))
    outputs = {}
    for mode_name in MODES:
        [result] = generate(engine, [prompt], params, mode_name)
        assert result.finish_reason == "stop", f"{mode_name}: {decode(engine, result)!r}"
        jsonschema.validate(json.loads(decode(engine, result)), schema)
        outputs[mode_name] = result.token_ids
    reference = outputs.pop("autoregressive")
    for mode_name, tokens in outputs.items():
        assert tokens == reference, f"{mode_name} differs from constrained autoregressive decoding"


def test_speculation_accepts_drafts_under_a_constraint(engine, prompt):
    params = SamplingParams(max_tokens=120, constraint=Constraint.json_schema(SCHEMAS["nested-object"]))
    [result] = generate(engine, [prompt], params, "speculative-chain")
    assert result.stats.accepted > 0 and result.stats.verify_steps < len(result.token_ids)
    assert result.stats.mask_seconds > 0


def test_constrained_and_free_requests_share_a_round(engine, prompt):
    constrained = SamplingParams(max_tokens=60, constraint=Constraint.json_schema(SCHEMAS["array-of-enums"]))
    free = SamplingParams(max_tokens=20)
    for mode_name in ("scheduled-batched-chain", "scheduled-rounds-tree"):
        alone_free = generate(engine, [prompt], free, mode_name)[0].token_ids
        alone_constrained = generate(engine, [prompt], constrained, mode_name)[0].token_ids
        together = generate(engine, [prompt, prompt, prompt], [free, constrained, free], mode_name)
        assert together[0].token_ids == alone_free == together[2].token_ids
        assert together[1].token_ids == alone_constrained
        assert json.loads(decode(engine, together[1])) and decode(engine, together[0]) != decode(engine, together[1])


@pytest.mark.parametrize("mode_name", ["autoregressive", "speculative-tree", "scheduled-batched-chain"])
def test_sampled_output_is_schema_valid(engine, prompt, mode_name):
    schema = SCHEMAS["optional-fields"]
    params = [SamplingParams(temperature=1.0, max_tokens=80, seed=seed, constraint=Constraint.json_schema(schema))
              for seed in range(6)]
    results = generate(engine, [prompt] * 6, params, mode_name)
    texts = set()
    for result in results:
        assert result.finish_reason == "stop", decode(engine, result)
        jsonschema.validate(json.loads(decode(engine, result)), schema)
        texts.add(decode(engine, result))
    assert len(texts) > 1, "seeded samples should differ"


def test_regex_and_grammar_constraints(engine, prompt):
    [date] = engine.generate([prompt], SamplingParams(max_tokens=30, constraint=Constraint.regex(r"20[0-9]{2}-(0[1-9]|1[0-2])")),
                             mode="scheduled")
    assert date.finish_reason == "stop"
    text = decode(engine, date)
    assert len(text) == 7 and text.startswith("20") and text[4] == "-"
    lark = 'start: "yes" | "no" | "maybe " NUMBER\nNUMBER: /[1-9]/'
    [answer] = engine.generate([prompt], SamplingParams(max_tokens=30, constraint=Constraint.grammar(lark)),
                               mode="speculative")
    assert decode(engine, answer) in {"yes", "no"} | {f"maybe {d}" for d in range(1, 10)}


def test_a_reply_cut_by_max_tokens_says_length(engine, prompt):
    params = SamplingParams(max_tokens=4, constraint=Constraint.json_schema(SCHEMAS["nested-object"]))
    [result] = engine.generate([prompt], params, mode="scheduled")
    assert result.finish_reason == "length" and len(result.token_ids) == 4


@pytest.mark.parametrize("constraint, message", [
    (lambda: Constraint.json_schema({"type": "integer", "minimum": 5, "maximum": 2}), "Unsatisfiable schema"),
    (lambda: Constraint.json_schema({"type": "frobnicate"}), "Invalid type: frobnicate"),
    (lambda: Constraint.json_schema({"type": "string", "pattern": "["}), "unclosed character class"),
    (lambda: Constraint.regex("a{2,1}"), "invalid repetition count"),
    (lambda: Constraint.grammar("start: missing_rule"), "unknown name"),
    (lambda: Constraint.regex("[a&&b]x"), "cannot be satisfied"),
    (lambda: Constraint.json_schema({"allOf": [{"type": "string"}, {"type": "integer"}]}), "Unsatisfiable schema"),
])
def test_bad_or_unsatisfiable_constraints_are_refused_when_submitted(engine, prompt, constraint, message):
    with pytest.raises(ValueError, match=message):
        engine.submit(prompt, SamplingParams(constraint=constraint()))
    with pytest.raises(ValueError, match=message):
        engine.check_request(prompt, SamplingParams(constraint=constraint()))


def test_constraint_inputs_are_checked():
    with pytest.raises(ValueError, match="not valid JSON"):
        Constraint.json_schema("{not json")
    with pytest.raises(ValueError, match="must be a JSON object"):
        Constraint.json_schema("[1, 2]")
    with pytest.raises(ValueError, match="constraint kind"):
        Constraint("xml", "<a/>")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        Constraint.regex("")
    with pytest.raises(ValueError, match="constraint must be None or"):
        SamplingParams(constraint={"type": "object"})  # type: ignore[arg-type]


def test_an_engine_without_tokenizer_refuses_constraints(tiny_target, tiny_draft, prompt):
    engine = SeedEngine(tiny_target, tiny_draft)
    with pytest.raises(ValueError, match="needs the target's tokenizer"):
        engine.submit(prompt, SamplingParams(constraint=Constraint.regex("a+")))
    engine.close()


def test_token_masks_walk_drafted_paths_and_roll_back(engine):
    tokenizer = engine.tokenizer
    matcher = engine.grammar_vocabulary().compile(Constraint.regex("ab(c|d)e"))
    masks = TokenMasks(matcher, engine.target_model.config.vocab_size)

    def texts(mask):
        return {tokenizer.decode([token]) for token in mask.nonzero().flatten().tolist()}

    a, b, c, d, e = (tokenizer.convert_tokens_to_ids(ch) for ch in "abcde")
    assert texts(masks.allowed()) <= {"a", "ab", "abc", "abd", "abce", "abde"} and "a" in texts(masks.allowed())
    after_ab = texts(masks.allowed([a, b]))
    assert {"c", "d"} <= after_ab <= {"c", "d", "ce", "de"}
    assert texts(masks.allowed([a, b, d])) == {"e"}
    assert masks.allowed([b]) is None  # off the grammar: no node there is ever accepted
    assert "b" in texts(masks.allowed([a])) and "c" not in texts(masks.allowed([a]))  # rolled back from a, b, d
    masks.commit([a, b])
    assert texts(masks.allowed()) == after_ab
    assert not masks.finished
    masks.commit([c, e])
    assert masks.finished
    with pytest.raises(RuntimeError, match="not allowed by the grammar"):
        TokenMasks(engine.grammar_vocabulary().compile(Constraint.regex("ab")), 400).commit([b])


# A small schema language for hypothesis: leaves with bounds and enums, objects with optional
# fields, arrays with bounded lengths, nested up to three levels.
_LEAVES = st.one_of(
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-50, 50), st.integers(0, 100)),
    st.builds(lambda lo: {"type": "number", "minimum": lo, "maximum": lo + 10}, st.integers(-5, 5)),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 6)),
    st.just({"type": "boolean"}),
    st.lists(st.sampled_from(["x", "yes", "no", "12", "a b"]), min_size=1, max_size=3, unique=True).map(
        lambda values: {"enum": values}),
)


def _containers(children):
    objects = st.dictionaries(st.sampled_from(["a", "b", "c", "name", "value"]), children, min_size=1, max_size=3
                              ).flatmap(lambda props: st.sets(st.sampled_from(sorted(props))).map(
                                  lambda required: {"type": "object", "properties": props,
                                                    "required": sorted(required), "additionalProperties": False}))
    arrays = st.builds(lambda items, n: {"type": "array", "items": items, "maxItems": n}, children, st.integers(0, 3))
    return st.one_of(objects, arrays)


SCHEMA_STRATEGY = st.recursive(_LEAVES, _containers, max_leaves=6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMA_STRATEGY, mode_name=st.sampled_from(["speculative-tree", "scheduled-batched-chain"]))
def test_generated_schemas_give_valid_output_equal_to_autoregressive(engine, prompt, schema, mode_name):
    params = SamplingParams(max_tokens=200, constraint=Constraint.json_schema(schema))
    [reference] = generate(engine, [prompt], params, "autoregressive")
    [result] = generate(engine, [prompt], params, mode_name)
    assert result.token_ids == reference.token_ids
    if result.finish_reason == "stop":
        jsonschema.validate(json.loads(decode(engine, result)), schema)
    else:  # random weights may write a long string; what was written is still a valid prefix
        assert result.finish_reason == "length"


def test_masks_are_applied_before_temperature(engine, prompt):
    """A forced token is committed at any temperature: the masked distribution has one token."""
    params = [SamplingParams(temperature=100.0, max_tokens=10, seed=s, constraint=Constraint.regex("forced"))
              for s in range(3)]
    for result in engine.generate([prompt] * 3, params, mode="scheduled"):
        assert decode(engine, result) == "forced"
