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
