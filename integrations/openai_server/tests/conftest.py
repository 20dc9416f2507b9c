"""A real server on loopback for the OpenAI-compatible server tests.

The tiny random model pair comes from `tests/unit/conftest.py` (loaded once under its own
module name, so both test trees share its builders); the server is uvicorn in a background
thread, bound to 127.0.0.1 on a port the OS picks.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the server needs: pip install 'langchain-seed[server]'")
pytest.importorskip("uvicorn", reason="the server needs: pip install 'langchain-seed[server]'")

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURES_MODULE = "langchain_seed_tiny_fixtures"


def _tiny_fixtures():
    """tests/unit/conftest.py as a module (imported once per process)."""
    if FIXTURES_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(FIXTURES_MODULE, REPO_ROOT / "tests" / "unit" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[FIXTURES_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[FIXTURES_MODULE]


_fixtures = _tiny_fixtures()
tiny_tokenizer = _fixtures.tiny_tokenizer
tiny_engine = _fixtures.tiny_engine
tiny_llm = _fixtures.tiny_llm

MODEL = "tiny-seed"
API_KEY = "test-key-123"


class LoopbackServer:
    """uvicorn serving an ASGI app from a daemon thread on 127.0.0.1:<free port>."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="test-uvicorn", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def service(self):
        return self.app.state.service

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


@pytest.fixture(scope="module")
def server_llm(tiny_engine):
    """The `SeedLLM` the server serves: greedy, 24 new tokens by default."""
    from langchain_seed.lc.llms import SeedLLM

    return SeedLLM.from_engine(tiny_engine, max_tokens=24, model_name=MODEL)


@pytest.fixture(scope="module")
def server(server_llm):
    """A running server with an API key and small limits (so that refusals are cheap to test)."""
    from langchain_seed.serving import ServerSettings, create_app

    settings = ServerSettings(api_key=API_KEY, max_body_bytes=32_768, max_tokens_limit=2_000, max_n=4,
                              max_prompts=8)
    running = LoopbackServer(create_app(server_llm, settings)).start()
    running.model, running.api_key = MODEL, API_KEY
    yield running
    running.stop()


@pytest.fixture
def client(server):
    """The official `openai` client pointed at the server."""
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60) as client:
        yield client

