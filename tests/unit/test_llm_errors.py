"""Errors a user meets early, said in one line: a model path that does not exist, a hub id
that cannot be fetched, an LLM pickled or deep-copied into a worker, and one bad prompt in
a batch (it gets its own error; the good prompts still get their text, in one engine run)."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_target, tiny_tokenizer):
    """The tiny target and its tokenizer saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-target")
    tiny_target.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def assert_quiet(capfd, caplog) -> None:
    """Nothing printed or logged at warning level: the error says it all."""
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []


# --------------------------------------------------------------------- missing models


@pytest.mark.parametrize("target", ["/nonexistent", "./no-such-model", "../no-such-model", "~/no-such-model-dir",
                                    "models/org/name"])
def test_missing_local_target_is_refused_in_one_line(target, capfd, caplog):
    from langchain_seed import SeedLLM

    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as raised:
        SeedLLM.from_pretrained(target=target)
    message = str(raised.value)
    assert message == f"target {target!r} does not exist, and it is not a Hugging Face Hub id (those look like " \
                      f"'org/name')"
    assert time.perf_counter() - started < 5
    assert_quiet(capfd, caplog)


def test_missing_draft_is_refused_naming_the_draft(tiny_dir, capfd, caplog):
    from langchain_seed import ChatSeed

    with pytest.raises(FileNotFoundError, match=r"^draft '/nonexistent/draft' does not exist, and it is not a "
                                                r"Hugging Face Hub id"):
        ChatSeed.from_pretrained(target=str(tiny_dir), draft="/nonexistent/draft")
    assert_quiet(capfd, caplog)


def test_hub_id_that_cannot_be_fetched_is_refused_quickly_with_its_cause(capfd, caplog):
    from langchain_seed import SeedLLM

    repo_id = "langchain-seed-tests/no-such-model-3f9a"
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError) as raised:
        SeedLLM.from_pretrained(target=repo_id)
    message = str(raised.value)
    assert message.startswith(f"target {repo_id!r} is not a local path, and the Hugging Face Hub model could not "
                              f"be found in the local cache or downloaded (")
    assert "\n" not in message and raised.value.__cause__ is not None
    assert time.perf_counter() - started < 20  # the Hub client alone retries for about 50 s
    assert_quiet(capfd, caplog)


def test_invalid_hub_id_is_refused(capfd, caplog):
    from langchain_seed import SeedLLM

    with pytest.raises(FileNotFoundError, match=r"^target 'no such model' is not an existing path nor a valid "
                                                r"Hugging Face Hub id"):
        SeedLLM.from_pretrained(target="no such model")
    assert_quiet(capfd, caplog)


def test_existing_local_directory_still_loads(tiny_dir):
    from langchain_seed import SeedLLM

    llm = SeedLLM.from_pretrained(target=str(tiny_dir), decoding="autoregressive", max_tokens=3)
    try:
        assert llm.model_name == str(tiny_dir)
        assert isinstance(llm.invoke("The quick brown fox"), str)
    finally:
        llm.engine.close()


# ------------------------------------------------------------------ copies and pickles


@pytest.fixture(params=["SeedLLM", "ChatSeed"])
def model(request, tiny_llm):
    """The tiny SeedLLM, or a ChatSeed over its engine."""
    from langchain_seed import ChatSeed

    return tiny_llm if request.param == "SeedLLM" else ChatSeed.from_llm(tiny_llm)


@pytest.mark.parametrize(("copier", "verb"), [("pickle", "pickled"), ("deepcopy", "deep-copied")])
def test_pickling_or_deep_copying_a_live_model_says_how_to_rebuild_it(model, copier, verb):
    import copy
    import pickle

    name = type(model).__name__
    copy_it = pickle.dumps if copier == "pickle" else copy.deepcopy
    for target in (model, model.bind(max_tokens=3)):
        with pytest.raises(TypeError) as raised:
            copy_it(target)
        message = str(raised.value)
        assert message.startswith(f"{name} cannot be {verb}: it holds a live SeeD engine (loaded models and a "
                                  f"running scheduler thread) that cannot be copied or pickled.")
        assert f"{name}.from_default(...)" in message and f"{name}.from_pretrained(target, draft, ...)" in message
        assert "Share this one object between threads" in message


def test_shallow_copies_share_the_engine_and_still_run(tiny_llm):
    import copy

    from langchain_seed import ChatSeed

    prompt = "The quick brown fox"
    expected = tiny_llm.invoke(prompt, max_tokens=4)
    shallow = [tiny_llm.model_copy(update={"max_tokens": 4}), copy.copy(tiny_llm).model_copy(update={"max_tokens": 4})]
    for other in shallow:
        assert other.engine is tiny_llm.engine and other.invoke(prompt) == expected
    assert tiny_llm.bind(max_tokens=4).invoke(prompt) == expected
    assert tiny_llm.with_config(tags=["copy"]).invoke(prompt, max_tokens=4) == expected
    chat = ChatSeed.from_llm(tiny_llm, max_tokens=4)
    assert chat.engine is tiny_llm.engine and isinstance(chat.invoke("Hi").content, str)


def test_a_model_without_an_engine_is_plain_configuration_and_copies(tiny_llm):
    import copy
    import pickle

    from langchain_seed import SeedLLM

    bare = SeedLLM(max_tokens=7, k_config=(2, 1))
    assert pickle.loads(pickle.dumps(bare)).k_config == (2, 1)
    assert copy.deepcopy(bare).max_tokens == 7


# ------------------------------------------------------------- one bad prompt in a batch

GOOD = ["The quick brown fox", "Tree of thoughts: propose"]
FAR_TOO_LONG = "zq~|" * 700  # about 2800 tokens: past the tiny model's 2048 positions


@pytest.fixture
def engine_runs(tiny_engine, monkeypatch):
    """The prompt count of every engine run started (scheduled `submit_many`, serial `generate`)."""
    runs: list[int] = []
    for name in ("submit_many", "generate"):
        def counted(prompt_ids, *args, _original=getattr(tiny_engine, name), **kwargs):  # noqa: B008 - bound now
            runs.append(len(prompt_ids))
            return _original(prompt_ids, *args, **kwargs)

        monkeypatch.setattr(tiny_engine, name, counted)
    return runs


@pytest.mark.parametrize("decoding", ["scheduled", "speculative"])
@pytest.mark.parametrize("use_async", [False, True], ids=["batch", "abatch"])
def test_a_bad_prompt_gets_its_own_error_and_the_good_ones_share_one_run(tiny_llm, engine_runs, decoding,
                                                                         use_async):
    import asyncio

    expected = [tiny_llm.invoke(prompt, decoding=decoding) for prompt in GOOD]
    engine_runs.clear()
    inputs = [GOOD[0], FAR_TOO_LONG, GOOD[1], ""]
    if use_async:
        outputs = asyncio.run(tiny_llm.abatch(inputs, return_exceptions=True, decoding=decoding))
    else:
        outputs = tiny_llm.batch(inputs, return_exceptions=True, decoding=decoding)
    assert [outputs[0], outputs[2]] == expected
    assert isinstance(outputs[1], ValueError) and str(outputs[1]).startswith("prompt 1 has 2800 tokens")
    assert "context window of 2048" in str(outputs[1])
    assert isinstance(outputs[3], ValueError) and str(outputs[3]).startswith("prompt 3 is empty")
    assert engine_runs == [2]


def test_without_return_exceptions_the_first_bad_prompt_is_raised(tiny_llm):
    with pytest.raises(ValueError, match="^prompt 1 has 2800 tokens"):
        tiny_llm.batch([GOOD[0], FAR_TOO_LONG, GOOD[1]])


def test_every_prompt_bad_starts_no_run_and_bad_options_fail_every_input(tiny_llm, engine_runs):
    outputs = tiny_llm.batch([FAR_TOO_LONG, b"bytes", ""], return_exceptions=True)
    assert [type(o) for o in outputs] == [ValueError, TypeError, ValueError]
    assert "prompt 2 is empty" in str(outputs[2]) and engine_runs == []
    outputs = tiny_llm.batch(GOOD, return_exceptions=True, max_tokens=0)
    assert all(isinstance(o, ValueError) and "max_tokens must be a positive int" in str(o) for o in outputs)


def test_configs_and_callbacks_stay_with_their_own_inputs(tiny_llm, engine_runs):
    from langchain_core.callbacks import BaseCallbackHandler

    class Starts(BaseCallbackHandler):
        def __init__(self) -> None:
            self.seen: list[tuple[str, tuple[str, ...]]] = []

        def on_llm_start(self, serialized, prompts, *, tags=None, **kwargs) -> None:
            self.seen.append((prompts[0], tuple(tags or ())))

    handler = Starts()
    inputs = [GOOD[0], FAR_TOO_LONG, GOOD[1]]
    configs = [{"callbacks": [handler], "tags": [f"input-{i}"]} for i in range(3)]
    outputs = tiny_llm.batch(inputs, configs, return_exceptions=True, max_tokens=4, stop=["\n"])
    assert sorted(handler.seen) == sorted([(GOOD[0], ("input-0",)), (GOOD[1], ("input-2",))])
    assert isinstance(outputs[1], ValueError) and all(isinstance(outputs[i], str) for i in (0, 2))
    assert engine_runs == [2]
    assert tiny_llm.batch(inputs, {"max_concurrency": 1}, return_exceptions=True, max_tokens=4)[::2] == \
        [outputs[0], outputs[2]]


def test_chat_batch_keeps_its_good_conversations(tiny_llm):
    from langchain_seed import ChatSeed

    chat = ChatSeed.from_llm(tiny_llm, max_tokens=4)
    outputs = chat.batch(["Hi", FAR_TOO_LONG, "Hello"], return_exceptions=True)
    assert isinstance(outputs[1], ValueError) and "context window of 2048" in str(outputs[1])
    assert [outputs[0].content, outputs[2].content] == [chat.invoke("Hi").content, chat.invoke("Hello").content]
