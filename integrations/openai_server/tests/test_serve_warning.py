"""`serve` warns when it would expose the model beyond this machine without an API key.

uvicorn.run is replaced by a recorder: nothing binds a port.
"""

from __future__ import annotations

import pytest

from langchain_seed.serving.app import serve

WARNING = "without an API key"


@pytest.mark.parametrize("host,api_key,warned", [
    ("0.0.0.0", None, True),
    ("192.168.1.5", None, True),
    ("::", None, True),
    ("0.0.0.0", "a-key", False),
    ("127.0.0.1", None, False),
    ("localhost", None, False),
    ("::1", None, False),
])
def test_serve_warns_on_a_non_loopback_address_without_a_key(tiny_llm, monkeypatch, caplog, host, api_key, warned):
    import uvicorn

    runs: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append(options))
    settings = {} if api_key is None else {"api_key": api_key}
    with caplog.at_level("WARNING", logger="langchain_seed.serving"):
        serve(tiny_llm, host=host, port=8123, **settings)
    assert runs == [{"host": host, "port": 8123, "log_level": "info"}]
    messages = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    if warned:
        assert len(messages) == 1 and host in messages[0]
        assert [r.levelname for r in caplog.records if WARNING in r.getMessage()] == ["WARNING"]
    else:
        assert messages == []
