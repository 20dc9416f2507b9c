"""The OpenAI-compatible server, tested against a real uvicorn server on 127.0.0.1.

Clients: the official `openai` package, LangChain's `ChatOpenAI` / `OpenAI`
(langchain-openai), and raw `httpx` for what those hide (status codes, disconnects).
The model is the tiny random pair; at temperature 0 every answer must be exactly what
`SeedLLM` / `ChatSeed` give in-process for the same prompt.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.timeout(180)

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?"


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(0.02)
    return True


def solo_chat(server_llm, content: str, **kwargs) -> str:
    from langchain_seed import ChatSeed

    return ChatSeed.from_llm(server_llm).invoke([("user", content)], **kwargs).content


def auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


# ------------------------------------------------------------------ the openai client


def test_models_lists_the_served_model(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]


def test_completion_is_seed_llms_greedy_text_with_usage(client, server, server_llm, tiny_tokenizer):
    prompt = "The quick brown fox"
    response = client.completions.create(model=server.model, prompt=prompt, max_tokens=12)
    [choice] = response.choices
    assert choice.text == server_llm.invoke(prompt, max_tokens=12)
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(tiny_tokenizer(prompt)["input_ids"])
    assert response.usage.completion_tokens == 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_completion_stream_concatenates_to_the_same_text(client, server, server_llm):
    prompt = "Tree of thoughts: propose"
    chunks = list(client.completions.create(model=server.model, prompt=prompt, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == server_llm.invoke(prompt, max_tokens=12)
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1, "tokens arrive in several chunks"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_completion_batch_of_prompts_n_and_stop(client, server, server_llm):
    prompts = ["Speculative decoding drafts", "def add(a, b):"]
    solo = [server_llm.invoke(p, max_tokens=12) for p in prompts]
    response = client.completions.create(model=server.model, prompt=prompts, max_tokens=12, n=2)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text for c in response.choices] == [solo[0], solo[0], solo[1], solo[1]]

    stop = solo[0][3:5]
    expected = server_llm.invoke(prompts[0], max_tokens=12, stop=[stop])
    assert expected == solo[0][:solo[0].index(stop)]
    for stop_param in (stop, [stop, "never-seen-stop"]):
        [choice] = client.completions.create(model=server.model, prompt=prompts[0], max_tokens=12,
                                             stop=stop_param).choices
        assert (choice.text, choice.finish_reason) == (expected, "stop")


def test_streaming_several_choices_interleaves_them_by_index(client, server, server_llm):
    prompt = "Question: what is 12 + 30?"
    chunks = list(client.completions.create(model=server.model, prompt=prompt, max_tokens=10, n=3, stream=True))
    texts = {0: "", 1: "", 2: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert set(texts.values()) == {server_llm.invoke(prompt, max_tokens=10)}


def test_seeded_sampling_is_reproducible_and_top_p_is_accepted(client, server):
    kwargs = dict(model=server.model, prompt="Once upon", max_tokens=10, n=2, temperature=1.0, top_p=0.9, seed=7)
    first = [c.text for c in client.completions.create(**kwargs).choices]
    second = [c.text for c in client.completions.create(**kwargs).choices]
    assert first == second
    assert first[0] != first[1], "the n samples of one request use different seeds"


def test_chat_completion_and_stream_are_chat_seeds_reply(client, server, server_llm, tiny_tokenizer):
    content = "What is 12 + 30?"
    expected = solo_chat(server_llm, content, max_tokens=12)
    response = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": content}],
                                              max_tokens=12)
    [choice] = response.choices
    assert (choice.message.role, choice.message.content) == ("assistant", expected)
    assert choice.finish_reason == "length" and response.usage.completion_tokens == 12
    rendered = tiny_tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    assert response.usage.prompt_tokens == len(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)

    stream = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": content}],
                                            max_completion_tokens=12, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_system_message_content_parts_and_default_max_tokens(client, server, server_llm):
    from langchain_seed import ChatSeed

    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}]
    expected = ChatSeed.from_llm(server_llm).invoke([("system", "Be brief."), ("user", "Hello there")]).content
    response = client.chat.completions.create(model=server.model, messages=messages)
    assert response.choices[0].message.content == expected
    assert response.usage.completion_tokens <= 24, "no max_tokens: the served model's default (24)"


# ------------------------------------------------------------------------ LangChain


def test_langchain_chat_openai_invoke_and_stream(server, server_llm):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(base_url=server.base_url, api_key=server.api_key, model=server.model,
                                       max_tokens=12, max_retries=0, timeout=60, stream_usage=True)
    expected = solo_chat(server_llm, "Hi there", max_tokens=12)
    message = chat.invoke("Hi there")
    assert message.content == expected
    assert message.usage_metadata["output_tokens"] == 12
    chunks = list(chat.stream("Hi there"))
    assert "".join(c.content for c in chunks) == expected
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == 12


def test_tree_of_thoughts_runs_unchanged_over_the_server_through_chat_openai(server, server_llm):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_seed import ChatSeed, TreeOfThoughts

    remote = langchain_openai.ChatOpenAI(base_url=server.base_url, api_key=server.api_key, model=server.model,
                                         max_tokens=16, max_retries=0, timeout=120)
    local = ChatSeed.from_llm(server_llm, max_tokens=16)
    requests_before = server.service.metrics.completed
    over_server = TreeOfThoughts(llm=remote, task="gsm8k", breadth=3, depth=2).invoke(QUESTION, return_tree=True)
    served = server.service.metrics.completed - requests_before
    in_process = TreeOfThoughts(llm=local, task="gsm8k", breadth=3, depth=2).invoke(QUESTION, return_tree=True)
    assert over_server.answer == in_process.answer
    assert over_server.tree.to_dict() == in_process.tree.to_dict()
    assert served == over_server.stats.llm_calls == in_process.stats.llm_calls >= 3


def test_tree_of_thoughts_over_the_server_through_the_openai_llm(server, server_llm):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_seed import SeedLLM, TreeOfThoughts

    remote = langchain_openai.OpenAI(base_url=server.base_url, api_key=server.api_key, model=server.model,
                                     max_tokens=16, temperature=0, max_retries=0, timeout=120)
    local = SeedLLM.from_engine(server_llm.engine, max_tokens=16)
    over_server = TreeOfThoughts(llm=remote, task="gsm8k", breadth=2, depth=1).invoke(QUESTION)
    assert over_server == TreeOfThoughts(llm=local, task="gsm8k", breadth=2, depth=1).invoke(QUESTION)


# ----------------------------------------------------------------------- scheduling


def test_sixteen_concurrent_clients_are_answered_correctly_and_scheduled_together(server, server_llm):
    scheduler = server_llm.engine.scheduler
    prompts = [f"Sub-question {i} of 16: what is {i} + {2 * i}?" for i in range(16)]
    expected = [server_llm.invoke(p, max_tokens=20) if i % 2 else solo_chat(server_llm, p, max_tokens=20)
                for i, p in enumerate(prompts)]
    assert wait_until(lambda: scheduler.active == 0)
    rounds_before, finished_before = scheduler.stats.rounds, len(scheduler.stats.per_request)
    peak = {"active": 0}
    sampling = threading.Event()

    def sample_active() -> None:
        while not sampling.is_set():
            peak["active"] = max(peak["active"], scheduler.active)
            time.sleep(0.001)

    async def ask(client, i: int, prompt: str) -> str:
        if i % 2:
            response = await client.completions.create(model=server.model, prompt=prompt, max_tokens=20)
            return response.choices[0].text
        response = await client.chat.completions.create(model=server.model, max_tokens=20,
                                                        messages=[{"role": "user", "content": prompt}])
        return response.choices[0].message.content

    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(ask(client, i, p) for i, p in enumerate(prompts)))

    sampler = threading.Thread(target=sample_active, daemon=True)
    sampler.start()
    try:
        answers = asyncio.run(ask_all())
    finally:
        sampling.set()
        sampler.join()
    assert answers == expected
    served = scheduler.stats.per_request[finished_before:]
    assert len(served) == 16
    rounds = scheduler.stats.rounds - rounds_before
    verify_steps = sum(stats.verify_steps for stats in served)
    # Every active sequence is verified once per round: fewer rounds than verification steps
    # means some rounds verified several clients' sequences together.
    print(f"16 clients: {rounds} rounds for {verify_steps} verification steps; peak active {peak['active']}")
    assert rounds < verify_steps / 2, (rounds, verify_steps)
    assert peak["active"] > 1


# --------------------------------------------------------------------------- refusals


def test_wrong_or_missing_api_key_is_refused_with_401(server):
    with openai.OpenAI(base_url=server.base_url, api_key="wrong-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.completions.create(model=server.model, prompt="hi", max_tokens=2)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    response = httpx.post(f"{server.base_url}/completions", json={"model": server.model, "prompt": "hi"})
    assert response.status_code == 401 and "Authorization: Bearer" in error_of(response)["message"]
    assert httpx.get(f"{server.base_url}/models").status_code == 401


def test_oversized_body_is_refused_with_413_naming_the_limit(server):
    body = {"model": server.model, "prompt": "x" * 40_000, "max_tokens": 2}
    response = httpx.post(f"{server.base_url}/completions", json=body, headers=auth(server), timeout=30)
    assert response.status_code == 413
    error = error_of(response)
    assert "32768 bytes" in error["message"] and "--max-body-bytes" in error["message"]
    assert error["code"] == "request_too_large"

    def chunked_body():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "tiny-seed", "prompt": "'
        for _ in range(40):
            yield b"x" * 1_000
        yield b'"}'

    response = httpx.post(f"{server.base_url}/completions", content=chunked_body(), timeout=30,
                          headers={**auth(server), "Content-Type": "application/json"})
    assert response.status_code == 413 and "--max-body-bytes" in error_of(response)["message"]


def test_malformed_requests_get_openai_style_errors(server):
    post = lambda path, **kw: httpx.post(f"{server.base_url}/{path}", headers=auth(server), **kw)
    assert post("completions", content=b"{not json").status_code == 400
    assert post("completions", json=[1, 2]).status_code == 400
    response = post("chat/completions", json={"model": server.model, "messages": [{"content": "no role"}]})
    assert response.status_code == 400 and "role" in error_of(response)["message"]
    response = post("chat/completions", json={"model": server.model, "messages": []})
    assert response.status_code == 400 and error_of(response)["param"] == "messages"
    response = post("chat/completions", json={"model": server.model,
                                              "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert response.status_code == 400
    response = httpx.get(f"{server.base_url}/nowhere")
    assert response.status_code == 404 and error_of(response)["code"] == "404"
    assert httpx.get(f"{server.base_url}/completions").status_code == 405


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"max_tokens": 2_001}, 400, "--max-tokens-limit"),
        ({"n": 5}, 400, "--max-n"),
        ({"prompt": ["a"] * 9}, 400, "--max-prompts"),
        ({"model": "gpt-4o"}, 404, "serves 'tiny-seed'"),
        ({"logprobs": 3}, 400, "'logprobs' is not supported"),
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"stop": [""]}, 400, "non-empty"),
        ({"prompt": 42}, 400, "prompt"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(server, changes, status, words):
    body = {"model": server.model, "prompt": "hi", "max_tokens": 2, **changes}
    response = httpx.post(f"{server.base_url}/completions", json=body, headers=auth(server))
    assert response.status_code == status
    assert words in error_of(response)["message"]


def test_prompt_longer_than_the_context_window_is_refused(server, tiny_tokenizer):
    prompt = "zq~|" * 700
    assert len(tiny_tokenizer(prompt)["input_ids"]) > 2048 and len(prompt) < 32_000
    for path, body in [("completions", {"prompt": prompt, "max_tokens": 4}),
                       ("chat/completions", {"messages": [{"role": "user", "content": prompt}]})]:
        response = httpx.post(f"{server.base_url}/{path}", json={"model": server.model, **body},
                              headers=auth(server), timeout=30)
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "context_length_exceeded" and "maximum context length is 2048" in error["message"]
    response = httpx.post(f"{server.base_url}/completions", headers=auth(server),
                          json={"model": server.model, "prompt": "hi", "max_tokens": 2_000 - 1 + 100})
    assert response.status_code == 400


def test_chat_tools_are_refused_rather_than_ignored(client, server):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError, match="'tools' is not supported"):
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}],
                                       tools=[tool])


# ------------------------------------------------------------------------ disconnects


def test_client_disconnecting_mid_stream_frees_its_request(server, server_llm):
    scheduler, metrics = server_llm.engine.scheduler, server.service.metrics
    assert wait_until(lambda: scheduler.active == 0)
    cancelled_before, finished_before = metrics.cancelled, len(scheduler.stats.per_request)
    body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 1_500, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.base_url}/completions", json=body, headers=auth(server)) as response:
            assert response.status_code == 200
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
            assert json.loads(first[len("data: "):])["object"] == "text_completion"
            assert wait_until(lambda: scheduler.active == 1)
    assert wait_until(lambda: scheduler.active == 0 and metrics.cancelled == cancelled_before + 1, timeout=60)
    [stats] = scheduler.stats.per_request[finished_before:]
    assert stats.new_tokens < 1_500, "cancelled, not run to max_tokens"


def test_client_disconnecting_from_a_non_streamed_request_frees_it(server, server_llm):
    scheduler, metrics = server_llm.engine.scheduler, server.service.metrics
    assert wait_until(lambda: scheduler.active == 0)
    cancelled_before, finished_before = metrics.cancelled, len(scheduler.stats.per_request)
    body = {"model": server.model, "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": 1_500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=body, headers=auth(server),
                   timeout=httpx.Timeout(10, read=1.0))
    assert wait_until(lambda: scheduler.active == 0 and metrics.cancelled == cancelled_before + 1, timeout=60)
    [stats] = scheduler.stats.per_request[finished_before:]
    assert stats.new_tokens < 1_500


# ---------------------------------------------------------------------------- logging


def test_prompts_are_not_logged_unless_asked(server, client, server_llm, caplog):
    from langchain_seed.serving import ServerSettings, create_app

    secret = "my secret prompt 7141"
    with caplog.at_level("INFO", logger="langchain_seed.serving"):
        client.completions.create(model=server.model, prompt=secret, max_tokens=3)
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": secret}],
                                       max_tokens=3)
    assert "chatcmpl-" in caplog.text and "prompt tokens" in caplog.text
    assert secret not in caplog.text
    caplog.clear()

    app = create_app(server_llm, ServerSettings(model_name="tiny-seed", log_prompts=True))

    async def call() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/v1/completions", json={"model": "tiny-seed", "prompt": secret,
                                                                "max_tokens": 3})
            return response.status_code

    with caplog.at_level("INFO", logger="langchain_seed.serving"):
        assert asyncio.run(call()) == 200
    assert secret in caplog.text


# ---------------------------------------------------------------------- command line


def test_serve_command_options_become_settings(monkeypatch):
    import argparse

    from langchain_seed.cli.serve import add_parser, settings_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--max-n", "3", "--max-body-bytes", "100", "--log-prompts"])
    assert args.host == "127.0.0.1"
    monkeypatch.setenv("LANGCHAIN_SEED_API_KEY", "from-env")
    settings = settings_from_args(args)
    assert (settings.api_key, settings.max_n, settings.max_body_bytes, settings.log_prompts) == (
        "from-env", 3, 100, True)
    args = parser.parse_args(["serve", "--api-key", "from-flag"])
    assert settings_from_args(args).api_key == "from-flag"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--max-n", "0"])


def test_serve_command_starts_a_loopback_server_from_model_directories(tmp_path, tiny_engine, tiny_tokenizer):
    """The `serve` subcommand end to end, in a subprocess: load from disk, bind 127.0.0.1, answer."""
    import os
    import socket
    import subprocess
    import sys

    for name, model in (("target", tiny_engine.target_model), ("draft", tiny_engine.draft_model)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer.save_pretrained(tmp_path / name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = ("import argparse, sys; from langchain_seed.cli.serve import add_parser; "
                "parser = argparse.ArgumentParser(); add_parser(parser.add_subparsers()); "
                "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))")
    command = [sys.executable, "-c", launcher, "serve", "--target", str(tmp_path / "target"), "--draft",
               str(tmp_path / "draft"), "--port", str(port), "--model-name", "tiny-cli", "--max-n", "2",
               "--log-level", "warning"]
    env = {**os.environ, "LANGCHAIN_SEED_API_KEY": "env-key"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_until(lambda: up() or process.poll() is not None, timeout=90) and process.poll() is None
        headers = {"Authorization": "Bearer env-key"}
        response = httpx.post(f"{base}/v1/completions", headers=headers, timeout=30,
                              json={"model": "tiny-cli", "prompt": "The quick brown fox", "max_tokens": 5})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 5
        response = httpx.post(f"{base}/v1/completions", headers=headers, timeout=30,
                              json={"model": "tiny-cli", "prompt": "hi", "n": 3})
        assert response.status_code == 400 and "--max-n" in error_of(response)["message"]
        assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 401
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert f"Serving 'tiny-cli' at {base}/v1" in output
