"""SeedLLM on the tiny random pair, and the text helpers it streams through (`_text`)."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from pydantic import ValidationError

from langchain_seed.lc.llms import SeedLLM
from langchain_seed.lc.text import IncrementalDetokenizer, StopChecker, StopSequences, StreamingText

from handle_spies import spy_handles

PROMPTS = [
    "Question: what is 12 + 30?",
    "The quick brown fox",
    "Tree of thoughts: propose three steps.",
    "def add(a, b):",
]


def greedy_ids(engine, tokenizer, prompt: str, max_tokens: int) -> list[int]:
    from langchain_seed.engine import SamplingParams

    ids = tokenizer(prompt)["input_ids"]
    [result] = engine.generate([ids], SamplingParams(max_tokens=max_tokens), mode="autoregressive")
    return result.token_ids


class TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokenCounter(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# --------------------------------------------------------------------------- invoke, batch


def test_invoke_is_the_targets_greedy_continuation_without_the_prompt(tiny_llm, tiny_engine, tiny_tokenizer):
    text = tiny_llm.invoke(PROMPTS[0])
    expected = tiny_tokenizer.decode(greedy_ids(tiny_engine, tiny_tokenizer, PROMPTS[0], 24), skip_special_tokens=True)
    assert isinstance(text, str) and text
    assert text == expected
    assert not text.startswith(PROMPTS[0])


def test_batch_is_one_engine_call_and_equals_invoke_per_prompt(tiny_llm, tiny_engine, monkeypatch):
    solo = [tiny_llm.invoke(p) for p in PROMPTS]
    calls: list[int] = []
    submit_many = tiny_engine.submit_many

    def spy(prompt_ids, *args, **kwargs):
        calls.append(len(prompt_ids))
        return submit_many(prompt_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_engine, "submit_many", spy)
    assert tiny_llm.batch(PROMPTS) == solo
    assert calls == [len(PROMPTS)]


async def test_abatch_is_one_engine_call(tiny_llm, tiny_engine, monkeypatch):
    solo = [tiny_llm.invoke(p) for p in PROMPTS[:3]]
    calls: list[int] = []
    submit_many = tiny_engine.submit_many

    def spy(prompt_ids, *args, **kwargs):
        calls.append(len(prompt_ids))
        return submit_many(prompt_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_engine, "submit_many", spy)
    assert await tiny_llm.abatch(PROMPTS[:3]) == solo
    assert calls == [3]


def test_lcel_chain(tiny_llm):
    prompt = PromptTemplate.from_template("Question: {question}\nAnswer:")
    chain = prompt | tiny_llm | StrOutputParser()
    question = "what is 12 + 30?"
    assert chain.invoke({"question": question}) == tiny_llm.invoke(f"Question: {question}\nAnswer:")


@pytest.mark.parametrize(
    "options",
    [
        {"decoding": "autoregressive"},
        {"decoding": "speculative"},
        {"decoding": "speculative", "k_config": (2, 2, 1)},
        {"decoding": "scheduled", "verify": "batched"},
        {"decoding": "scheduled", "verify": "rounds"},
        {"decoding": "scheduled", "k_config": (2, 2, 1)},
        {"decoding": "scheduled", "k_config": ()},
    ],
    ids=lambda o: "-".join(f"{v}" for v in o.values()),
)
def test_every_decoding_mode_gives_the_same_greedy_text(tiny_llm, options):
    reference = tiny_llm.invoke(PROMPTS[1], decoding="autoregressive")
    assert tiny_llm.invoke(PROMPTS[1], **options) == reference
    llm = SeedLLM.from_engine(tiny_llm.engine, max_tokens=24, **options)
    assert llm.invoke(PROMPTS[1]) == reference


# ------------------------------------------------------------------------------ streaming


def test_stream_chunks_add_up_to_invoke(tiny_llm):
    text = tiny_llm.invoke(PROMPTS[0])
    chunks = list(tiny_llm.stream(PROMPTS[0]))
    assert len([c for c in chunks if c]) > 2
    assert "".join(chunks) == text


@pytest.mark.parametrize("decoding", ["scheduled", "speculative", "autoregressive"])
async def test_astream_chunks_add_up_to_invoke(tiny_llm, decoding):
    text = tiny_llm.invoke(PROMPTS[2])
    chunks = [chunk async for chunk in tiny_llm.astream(PROMPTS[2], decoding=decoding)]
    assert len([c for c in chunks if c]) > 2
    assert "".join(chunks) == text


def test_stream_callbacks_see_every_chunk(tiny_llm):
    counter = TokenCounter()
    chunks = list(tiny_llm.stream(PROMPTS[0], config={"callbacks": [counter]}))
    assert len(counter.tokens) == len(chunks)
    assert counter.tokens == chunks


async def test_astream_callbacks_see_every_chunk(tiny_llm):
    counter = AsyncTokenCounter()
    chunks = [c async for c in tiny_llm.astream(PROMPTS[0], config={"callbacks": [counter]})]
    assert counter.tokens == chunks


def test_streaming_field_reports_chunks_from_invoke(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=24, streaming=True)
    counter = TokenCounter()
    text = llm.invoke(PROMPTS[0], config={"callbacks": [counter]})
    assert len(counter.tokens) > 2
    assert "".join(counter.tokens) == text


def _emitted(handle) -> int:
    """Tokens the engine has handed to `handle` so far."""
    return sum(len(chunk) for chunk in list(handle._chunks))


MAX_TOKENS_PER_ROUND = 2
"""k_config=(1,): one drafted token and the recovered/bonus token."""


def test_stream_stops_the_engine_when_the_consumer_leaves(tiny_engine, monkeypatch):
    handles = spy_handles(tiny_engine, monkeypatch)
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=400, k_config=(1,))
    stream = llm.stream(PROMPTS[0])
    next(stream)
    stream.close()  # GeneratorExit in _stream: the request is cancelled
    [handle] = handles
    at_cancel = _emitted(handle)
    result = handle.wait(timeout=120)  # an outer limit only: without the cancel it ends at 400 tokens
    assert result.finish_reason == "cancelled"
    # The round under way when the consumer left may still commit; nothing after it.
    assert len(result.token_ids) <= at_cancel + MAX_TOKENS_PER_ROUND < 400
    assert tiny_engine.scheduler.active == 0


# ---------------------------------------------------------------------------------- stop


def _stop_string(text: str, start: int = 6) -> str:
    """A 3-character stop string whose first occurrence in `text` is at or after `start`."""
    for index in range(start, len(text) - 3):
        candidate = text[index:index + 3]
        if text.find(candidate) == index and "\ufffd" not in candidate:
            return candidate
    raise AssertionError(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("decoding", ["scheduled", "speculative", "autoregressive"])
def test_stop_cuts_text_exactly_and_ends_generation_early(tiny_engine, decoding):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=40, decoding=decoding)
    full = llm.invoke(PROMPTS[0])
    stop = _stop_string(full)
    result = llm.generate([PROMPTS[0]], stop=[stop])
    [[generation]] = result.generations
    assert generation.text == full[:full.find(stop)]
    assert stop not in generation.text
    assert generation.generation_info["finish_reason"] == "stop"
    ids = greedy_ids(tiny_engine, llm.tokenizer, PROMPTS[0], 40)
    through_stop = next(n for n in range(1, 41) if stop in llm.tokenizer.decode(ids[:n], skip_special_tokens=True))
    assert generation.generation_info["new_tokens"] == through_stop  # not the round's tokens past it
    assert "".join(llm.stream(PROMPTS[0], stop=[stop])) == generation.text


def test_start_run_streams_each_generation_live(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=12)
    expected = [llm.invoke(prompt) for prompt in PROMPTS[:2]]
    run = llm.start_run(PROMPTS[:2], temperature=0.0)
    try:
        assert [("".join(run.iter_text(i))) for i in range(2)] == expected
        assert run.generation_info(1)["new_tokens"] == 12
    finally:
        run.close()
    with pytest.raises(ValueError, match="unknown"):
        llm.start_run(PROMPTS[:1], temprature=0.5)


async def test_stop_in_async_and_from_the_field(tiny_engine):
    full = SeedLLM.from_engine(tiny_engine, max_tokens=40).invoke(PROMPTS[1])
    stop = _stop_string(full)
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=40, stop=[stop])
    expected = full[:full.find(stop)]
    assert llm.invoke(PROMPTS[1]) == expected
    assert await llm.ainvoke(PROMPTS[1]) == expected
    assert "".join([c async for c in llm.astream(PROMPTS[1])]) == expected


def test_eos_ends_generation_and_is_not_in_the_text(tiny_target, tiny_draft, tiny_tokenizer):
    from langchain_seed.engine import SeedEngine

    engine = SeedEngine(tiny_target, tiny_draft, tiny_tokenizer)
    ids = greedy_ids(engine, tiny_tokenizer, PROMPTS[0], 30)
    position = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    saved = tiny_target.generation_config.eos_token_id
    tiny_target.generation_config.eos_token_id = [ids[position]]
    try:
        eos_engine = SeedEngine(tiny_target, tiny_draft, tiny_tokenizer)
    finally:
        tiny_target.generation_config.eos_token_id = saved
    llm = SeedLLM.from_engine(eos_engine, max_tokens=30)
    [[generation]] = llm.generate([PROMPTS[0]]).generations
    assert generation.text == tiny_tokenizer.decode(ids[:position], skip_special_tokens=True)
    assert generation.generation_info["finish_reason"] == "stop"
    assert generation.generation_info["new_tokens"] == position + 1
    assert "".join(llm.stream(PROMPTS[0])) == generation.text
    eos_engine.close()
    engine.close()


# ------------------------------------------------------------------------------------- n


def test_n_keeps_every_generation(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=12, n=3, temperature=1.0, seed=7)
    result = llm.generate(PROMPTS[:2])
    assert [len(g) for g in result.generations] == [3, 3]
    texts = [g.text for g in result.generations[0]]
    assert len(set(texts)) > 1  # different seeds per sample
    assert [g.text for g in llm.generate(PROMPTS[:2]).generations[0]] == texts  # seeded: reproducible
    assert result.llm_output["requests"] == 6
    greedy = SeedLLM.from_engine(tiny_engine, max_tokens=12, n=2).generate([PROMPTS[0]])
    assert greedy.generations[0][0].text == greedy.generations[0][1].text


def test_stream_refuses_n_above_one(tiny_llm):
    with pytest.raises(ValueError, match="n=2"):
        list(tiny_llm.stream(PROMPTS[0], n=2))


# ------------------------------------------------------------------------------- async


async def test_concurrent_ainvoke_share_the_scheduler_and_never_block_the_loop(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=32)
    prompts = PROMPTS + [p + " again" for p in PROMPTS]
    solo = [llm.invoke(p) for p in prompts]

    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    before = tiny_engine.stats().target_forwards
    started = time.perf_counter()
    results = await asyncio.gather(*(llm.agenerate([p]) for p in prompts))
    elapsed = time.perf_counter() - started
    after = tiny_engine.stats().target_forwards
    done.set()
    await tick_task

    assert [r.generations[0][0].text for r in results] == solo
    assert ticks >= 20 and ticks > elapsed * 5  # the loop kept turning all along (blocked, it would not tick)
    # verified together: far fewer target forwards than the requests' target calls summed
    target_calls = sum(r.generations[0][0].generation_info["target_calls"] for r in results)
    assert after - before < target_calls / 2


async def test_concurrent_astreams_match_invoke(tiny_llm):
    expected = [tiny_llm.invoke(p) for p in PROMPTS]

    async def collect(prompt: str) -> str:
        return "".join([chunk async for chunk in tiny_llm.astream(prompt)])

    assert await asyncio.gather(*(collect(p) for p in PROMPTS)) == expected


async def test_ainvoke_under_a_running_loop_and_sync_invoke_inside_it(tiny_llm):
    # sync invoke from a coroutine (a notebook cell) must not try to run the loop again
    assert tiny_llm.invoke(PROMPTS[0]) == await tiny_llm.ainvoke(PROMPTS[0])


# ------------------------------------------------------------------------- statistics


def test_generation_info_and_llm_output(tiny_llm):
    result = tiny_llm.generate(PROMPTS[:2])
    for [generation] in result.generations:
        info = generation.generation_info
        for key in ("acceptance_rate", "drafted", "accepted", "target_calls", "draft_calls", "new_tokens",
                    "seconds", "finish_reason"):
            assert key in info
        assert info["finish_reason"] == "length" and info["new_tokens"] == 24
        assert 0 < info["accepted"] <= info["drafted"]
        assert info["acceptance_rate"] == pytest.approx(info["accepted"] / info["drafted"])
        assert 1 <= info["target_calls"] <= 25 and info["draft_calls"] >= 1
        assert info["seconds"] > 0
    output = result.llm_output
    assert output["model_name"] == "tiny-random-llama"
    assert output["requests"] == 2 and output["new_tokens"] == 48
    assert 1 <= output["target_forwards"] and output["draft_forwards"] >= 1
    infos = [generation.generation_info for [generation] in result.generations]
    assert output["acceptance_rate"] == pytest.approx(
        sum(i["accepted"] for i in infos) / sum(i["drafted"] for i in infos))


def test_autoregressive_statistics(tiny_llm):
    result = tiny_llm.generate([PROMPTS[0]], decoding="autoregressive", max_tokens=10)
    info = result.generations[0][0].generation_info
    assert info["drafted"] == 0 and info["acceptance_rate"] == 0.0 and info["draft_calls"] == 0
    assert info["target_calls"] == 10  # one per token: the short prompt is fed with the first step
    assert result.llm_output["target_forwards"] == 10


def test_identity_tokens_and_tracing_params(tiny_llm, tiny_tokenizer):
    assert tiny_llm._llm_type == "seed"
    assert tiny_llm._identifying_params["k_config"] == (1, 1, 1, 1)
    assert tiny_llm.get_token_ids("café 日本") == tiny_tokenizer.encode("café 日本", add_special_tokens=False)
    assert tiny_llm.get_num_tokens("café 日本") == len(tiny_llm.get_token_ids("café 日本"))
    params = tiny_llm._get_ls_params(stop=["\n"], temperature=0.5)
    assert params == {"ls_provider": "langchain-seed", "ls_model_name": "tiny-random-llama", "ls_model_type": "llm",
                      "ls_temperature": 0.5, "ls_max_tokens": 24, "ls_stop": ["\n"]}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("decoding", "fast", "decoding must be one of 'autoregressive', 'speculative', 'scheduled'"),
        ("verify", "all", "verify must be one of 'rounds', 'batched'"),
        ("k_config", (0, 1), "k_config entries must be positive ints"),
        ("k_config", "1111", "k_config must be a sequence"),
        ("draft_confidence", 1.0, "draft_confidence must be a number in \\[0, 1\\)"),
        ("draft_confidence", "high", "draft_confidence must be a number in \\[0, 1\\)"),
        ("draft_survival", -0.1, "draft_survival must be a number in \\[0, 1\\)"),
        ("temperature", -0.5, "temperature must be a finite number in"),
        ("temperature", float("nan"), "temperature must be a finite number in"),
        ("top_p", 0, "top_p must be a number in"),
        ("max_tokens", 0, "max_tokens must be a positive int"),
        ("max_tokens", 2.5, "max_tokens must be a positive int"),
        ("seed", -1, "seed must be None or an int"),
        ("n", 0, "n \\(generations per prompt\\) must be an int"),
        ("timeout", 0, "timeout must be None or a positive number"),
        ("stop", [""], "stop sequences must be non-empty strings"),
    ],
)
def test_bad_fields_and_call_options_are_refused_by_name(tiny_engine, field, value, message):
    with pytest.raises(ValidationError, match=message) as error:
        SeedLLM.from_engine(tiny_engine, **{field: value})
    assert field in str(error.value)
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=4)
    if field != "stop":
        with pytest.raises(ValueError, match=message):
            llm.invoke(PROMPTS[0], **{field: value})
    else:
        with pytest.raises(ValueError, match=message):
            llm.invoke(PROMPTS[0], stop=value)


def test_unknown_fields_and_kwargs_are_refused(tiny_engine):
    with pytest.raises(ValidationError, match="temprature"):
        SeedLLM.from_engine(tiny_engine, temprature=0.5)
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=4)
    with pytest.raises(ValueError, match="unknown keyword argument.*'temprature'.*per-call options are: decoding"):
        llm.invoke(PROMPTS[0], temprature=0.5)


def test_per_call_overrides(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=24)
    result = llm.generate([PROMPTS[0]], max_tokens=5, k_config=(2, 2, 1), decoding="speculative", temperature=0.7,
                          seed=3)
    info = result.generations[0][0].generation_info
    assert info["new_tokens"] == 5 and info["decoding"] == "speculative"
    again = llm.generate([PROMPTS[0]], max_tokens=5, k_config=(2, 2, 1), decoding="speculative", temperature=0.7,
                         seed=3)
    assert again.generations[0][0].text == result.generations[0][0].text


def test_bad_prompts_are_refused(tiny_llm):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        tiny_llm.invoke("")
    with pytest.raises(ValueError, match="prompt 1 must be a string; got int"):
        tiny_llm.generate(["ok", 123])  # type: ignore[list-item]
    for decoding in ("scheduled", "autoregressive"):
        with pytest.raises(ValueError, match="context window"):
            tiny_llm.invoke("word " * 1100, max_tokens=200, decoding=decoding)


def test_model_without_engine_says_how_to_build_one():
    llm = SeedLLM()
    with pytest.raises(ValueError, match="has no engine.*from_default"):
        llm.invoke("hi")


def test_engine_failure_is_raised_from_invoke(tiny_target, tiny_tokenizer):
    from langchain_seed.engine import SeedEngine

    model = copy.deepcopy(tiny_target)
    engine = SeedEngine(model, None, tiny_tokenizer)
    llm = SeedLLM.from_engine(engine, max_tokens=8)
    assert llm.invoke(PROMPTS[0])  # warm: the 4-D mask check ran on the healthy model

    def explode(*args, **kwargs):
        raise RuntimeError("boom: the device fell over")

    model.forward = explode
    for decoding in ("scheduled", "autoregressive"):
        with pytest.raises(RuntimeError, match="boom"):
            llm.invoke(PROMPTS[0], decoding=decoding)
        with pytest.raises(RuntimeError, match="boom"):
            list(llm.stream(PROMPTS[0], decoding=decoding))
    engine.close()


def test_speculative_without_draft_is_refused(tiny_target, tiny_tokenizer):
    llm = SeedLLM.from_models(tiny_target, None, tiny_tokenizer, max_tokens=4)
    assert llm.invoke(PROMPTS[0], decoding="autoregressive") == llm.invoke(PROMPTS[0])
    with pytest.raises(ValueError, match="needs a draft model"):
        llm.invoke(PROMPTS[0], decoding="speculative")
    llm.engine.close()


def test_timeout_cancels_and_raises(tiny_engine):
    llm = SeedLLM.from_engine(tiny_engine, max_tokens=1500, k_config=(1,), timeout=0.05)
    with pytest.raises(TimeoutError, match="timeout=0.05"):
        llm.invoke(PROMPTS[0])


# -------------------------------------------------------------------------- constructors


def _save_pair(tmp_path, target, draft, tokenizer):
    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    for model, folder in ((target, target_dir), (draft, draft_dir)):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    (draft_dir / "head_token_ids.json").write_text(json.dumps(list(range(len(tokenizer)))))
    return target_dir, draft_dir


def test_from_pretrained_refuses_an_unknown_dtype(tmp_path, tiny_target, tiny_draft, tiny_tokenizer):
    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16; got 'float64'"):
        SeedLLM.from_pretrained(target_dir, draft_dir, dtype="float64")
    with pytest.raises(ValueError, match="dtype must be one of .*got 'fp16'"):
        SeedLLM.from_pretrained(target_dir, dtype="fp16")


def test_from_pretrained_refuses_a_draft_with_another_tokenizer(tmp_path, tiny_target, tiny_draft, tiny_tokenizer):
    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    other = copy.deepcopy(tiny_tokenizer)
    other.add_tokens(["<|draft-only|>"])  # the models still have the same vocabulary size
    other.save_pretrained(draft_dir)
    with pytest.raises(ValueError, match=r"draft and target tokenizers differ \(\d+ vs \d+ tokens\).*draft-only"):
        SeedLLM.from_pretrained(target_dir, draft_dir)
    tiny_tokenizer.save_pretrained(draft_dir)  # the same pair with matching tokenizers loads
    assert SeedLLM.from_pretrained(target_dir, draft_dir, max_tokens=4).invoke(PROMPTS[0])


def test_from_pretrained_and_from_default(tmp_path, tiny_target, tiny_draft, tiny_tokenizer, monkeypatch):
    import langchain_seed.pair.assemble
    import langchain_seed.pair.paths

    target_dir, draft_dir = _save_pair(tmp_path, tiny_target, tiny_draft, tiny_tokenizer)
    reference = SeedLLM.from_models(tiny_target, tiny_draft, tiny_tokenizer, max_tokens=8)
    llm = SeedLLM.from_pretrained(target_dir, draft_dir, max_tokens=8)
    assert llm.model_name == str(target_dir)
    assert llm.engine.draft_head_token_ids == list(range(len(tiny_tokenizer)))
    assert llm.invoke(PROMPTS[0]) == reference.invoke(PROMPTS[0])

    monkeypatch.setattr(langchain_seed.pair.assemble, "ensure_default_pair", lambda *a, **k: (target_dir, draft_dir))
    monkeypatch.setattr(langchain_seed.pair.paths, "default_seed_draft_dir", lambda: None)
    default = SeedLLM.from_default(max_tokens=8, k_config=(2, 1))
    assert default.model_name == "SmolLM2-135M-Instruct" and default.k_config == (2, 1)
    assert default.engine.draft_head_token_ids == list(range(len(tiny_tokenizer)))
    assert default.invoke(PROMPTS[0]) == reference.invoke(PROMPTS[0])
    for model in (reference, llm, default):
        model.engine.close()


# =========================================================================== _text helpers


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_detokenizer_holds_back_incomplete_utf8(tiny_tokenizer):
    text = "café naïve 日本語のテキスト 🙂🚀 Привет"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tiny_tokenizer)
    pieces = [detokenizer.push([token]) for token in ids] + [detokenizer.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert len([p for p in pieces if p]) > 5


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, 399), min_size=1, max_size=40), cuts=st.lists(st.integers(1, 5), max_size=40))
def test_detokenizer_pieces_are_final_and_add_up(tiny_tokenizer, ids, cuts):
    tokenizer = tiny_tokenizer
    detokenizer = IncrementalDetokenizer(tokenizer, skip_ids={0})
    position, released = 0, ""
    for size in cuts + [len(ids)]:
        chunk = ids[position:position + size]
        position += len(chunk)
        released += detokenizer.push(chunk)
        # never released text that the full decode of what came so far does not start with
        assert _decode(tokenizer, [t for t in ids[:position] if t != 0]).startswith(released)
    released += detokenizer.finish()
    assert released == _decode(tokenizer, [t for t in ids if t != 0]) == detokenizer.text


def test_detokenizer_keeps_the_first_words_space_for_sentencepiece_style_decoders():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"▁Hello": 0, "▁world": 1, "<unk>": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert tokenizer.decode([1]) == "world"  # alone, the leading space is dropped
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids=[0])
    assert detokenizer.push([1]) + detokenizer.finish() == " world"  # after the prompt it is kept


def test_stop_sequences():
    stops = StopSequences(["\n\n", "Answer:"])
    assert stops.find("abc Answer: x\n\n") == 4
    assert stops.find("abc\n\nAnswer:") == 3
    assert stops.find("nothing") == -1
    assert stops.partial_tail("text Ans") == 3
    assert stops.partial_tail("text\n") == 1
    assert stops.partial_tail("text") == 0
    assert not StopSequences(None) and StopSequences("x").strings == ("x",)
    with pytest.raises(ValueError, match="non-empty"):
        StopSequences(["ok", ""])
    with pytest.raises(ValueError, match="list of strings"):
        StopSequences([1])  # type: ignore[list-item]


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet="ab\ncé日", max_size=30),
    stop=st.lists(st.text(alphabet="ab\ncé日", min_size=1, max_size=3), max_size=3),
    cuts=st.lists(st.integers(1, 4), max_size=30),
)
def test_streaming_text_cuts_at_the_first_stop_and_never_leaks_it(tiny_tokenizer, text, stop, cuts):
    tokenizer = tiny_tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    stream = StreamingText(tokenizer, (), stop)
    position, pieces = 0, []
    for size in cuts + [len(ids)]:
        chunk = ids[position:position + size]
        position += len(chunk)
        pieces.append(stream.push(chunk))
    pieces.append(stream.finish())
    hits = [text.find(s) for s in stop if s in text]
    # Generation ends with the token that completes a stop string, whatever the chunking:
    # the text is cut at the earliest stop string in the text decoded up to that token.
    completing = next((k for k in range(1, len(ids) + 1) if any(s in _decode(tokenizer, ids[:k]) for s in stop)), None)
    upto = _decode(tokenizer, ids[:completing]) if completing else text
    expected = upto[:min(upto.find(s) for s in stop if s in upto)] if completing else text
    assert "".join(pieces) == expected == stream.text
    assert stream.stopped == bool(hits)
    assert stream.token_count == (completing or len(ids))
    # the engine-side checker, called after every token, fires exactly when a stop string is complete
    checker = StopChecker(tokenizer, (), stop)
    fired = next((k for k in range(1, len(ids) + 1) if checker(ids[:k])), None)
    assert (fired is not None) == bool(hits)
    if fired is not None:
        assert any(s in _decode(tokenizer, ids[:fired]) for s in stop)
        assert not any(s in _decode(tokenizer, ids[:fired - 1]) for s in stop)


def test_draft_survival_reaches_the_engine_as_a_field_and_per_call(tiny_engine):
    """`draft_survival` (the learnt draft depth) goes from the field, or a call's keyword, into
    the call's `SpeculativeConfig`; the text is the same whatever it is."""
    from langchain_seed.lc.options import CallOptions

    llm = SeedLLM.from_engine(tiny_engine, max_tokens=8, draft_survival=0.0)
    assert CallOptions.of(llm, {}).speculative_config().draft_survival == 0.0
    assert CallOptions.of(llm, {"draft_survival": 0.5}).speculative_config().draft_survival == 0.5
    assert llm.invoke(PROMPTS[0]) == llm.invoke(PROMPTS[0], draft_survival=0.5)
    assert llm._identifying_params["draft_survival"] == 0.0
