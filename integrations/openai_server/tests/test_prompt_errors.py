"""A bad prompt in a multi-prompt `/v1/completions` request does not fail the good ones.

Each choice of a bad prompt (empty, past the context window) carries `"text": ""`,
`"finish_reason": "error"` and an OpenAI-shaped `"error"` object; the good prompts are
decoded in one engine run, exactly as `SeedLLM` decodes them in-process. When every prompt
is bad the whole request is refused with the first one's 400, as before.
"""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.timeout(180)

GOOD = ["Speculative decoding drafts", "def add(a, b):"]
FAR_TOO_LONG = "zq~|" * 700  # about 2800 tokens: past the tiny model's 2048 positions


@pytest.fixture
def engine_runs(tiny_engine, monkeypatch):
    """The prompt count of every scheduled run submitted to the engine (from any thread)."""
    runs: list[int] = []

    def counted(prompt_ids, *args, _original=tiny_engine.submit_many, **kwargs):
        runs.append(len(prompt_ids))
        return _original(prompt_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_engine, "submit_many", counted)
    return runs


def post(server, **body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/completions", json={"model": server.model, **body},
                      headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60)


def assert_error_choice(choice: dict, index: int, code: str | None, words: str) -> None:
    assert (choice["index"], choice["text"], choice["finish_reason"]) == (index, "", "error")
    error = choice["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == "prompt"
    assert error["type"] == "invalid_request_error" and error["code"] == code and words in error["message"]


def test_bad_prompts_get_error_choices_and_good_ones_their_text_in_one_run(server, server_llm, tiny_tokenizer,
                                                                           engine_runs):
    solo = [server_llm.invoke(prompt, max_tokens=12) for prompt in GOOD]
    engine_runs.clear()
    response = post(server, prompt=[GOOD[0], FAR_TOO_LONG, GOOD[1], ""], max_tokens=12, n=2)
    assert response.status_code == 200
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == list(range(8))
    assert [c["text"] for c in choices[0:2] + choices[4:6]] == [solo[0], solo[0], solo[1], solo[1]]
    assert all(c["finish_reason"] == "length" and "error" not in c for c in choices[0:2] + choices[4:6])
    for index in (2, 3):
        assert_error_choice(choices[index], index, "context_length_exceeded", "maximum context length is 2048")
    for index in (6, 7):
        assert_error_choice(choices[index], index, None, "prompt 3 is empty")
    assert engine_runs == [4]
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == sum(len(tiny_tokenizer(p)["input_ids"]) for p in GOOD)
    assert usage["completion_tokens"] == 4 * 12


def test_the_openai_client_reads_the_error_choice(client, server, server_llm):
    response = client.completions.create(model=server.model, prompt=[FAR_TOO_LONG, GOOD[0]], max_tokens=6)
    bad, good = response.choices
    assert (bad.index, bad.text, bad.finish_reason) == (0, "", "error")
    assert bad.model_extra["error"]["code"] == "context_length_exceeded"
    assert (good.index, good.text) == (1, server_llm.invoke(GOOD[0], max_tokens=6))


def test_streamed_error_choices_come_first_as_one_chunk_each(server, server_llm, engine_runs):
    solo = [server_llm.invoke(prompt, max_tokens=8) for prompt in GOOD]
    engine_runs.clear()
    response = post(server, prompt=[GOOD[0], FAR_TOO_LONG, GOOD[1]], max_tokens=8, stream=True)
    lines = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line)["choices"] for line in lines[:-1]]
    assert all(len(choices) == 1 for choices in chunks)
    assert_error_choice(chunks[0][0], 1, "context_length_exceeded", "maximum context length is 2048")
    texts, reasons = {0: "", 2: ""}, {}
    for [choice] in chunks[1:]:
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            reasons[choice["index"]] = choice["finish_reason"]
    assert texts == {0: solo[0], 2: solo[1]} and reasons == {0: "length", 2: "length"}
    assert engine_runs == [2]


def test_when_every_prompt_is_bad_the_request_is_refused_with_the_first_error(server, engine_runs):
    response = post(server, prompt=[FAR_TOO_LONG, ""], max_tokens=4)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    response = post(server, prompt="", max_tokens=4)
    assert response.status_code == 400 and "prompt 0 is empty" in response.json()["error"]["message"]
    assert engine_runs == []
