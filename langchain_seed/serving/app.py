"""The ASGI (Starlette) application over `SeedService`, and `serve`, which runs it with uvicorn.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both stream over server-sent
events when `"stream": true`), `GET /v1/models`, and `GET /health`. Handlers are async and
never block the event loop; a client that disconnects cancels its generations at the
scheduler's next round. Needs the `server` extra (starlette, uvicorn):
`pip install "langchain-seed[server]"` (imported when an app is made).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from langchain_seed.lc.chat_models import ChatSeed
from langchain_seed.lc.llms import SeedLLM
from langchain_seed.serving.protocol import APIError, ClientDisconnected
from langchain_seed.serving.service import SeedService
from langchain_seed.serving.settings import ServerSettings

logger = logging.getLogger("langchain_seed.serving")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


async def _read_json(request: Any, limit: int) -> dict[str, Any]:
    """The JSON object of the request body, refusing bodies over `limit` bytes (413)."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(413, f"The request body is over this server's limit of {limit} bytes (--max-body-bytes).",
                         code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    return data


async def _wait_for_disconnect(request: Any) -> None:
    """Return once the client has gone (the request body must have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Any, work: Any) -> Any:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # runs the generations' clean-up: they are cancelled at the engine
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        task.cancel()


def create_app(llm: SeedLLM, settings: ServerSettings | None = None, *, chat: ChatSeed | None = None) -> Any:
    """A Starlette (ASGI) application serving `llm` (and `chat`, default `ChatSeed.from_llm(llm)`).

    `app.state.service` is the `SeedService` (its `metrics` count requests and disconnects).
    """
    try:
        from starlette.applications import Starlette
        from starlette.background import BackgroundTask
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"the server needs starlette and uvicorn: pip install 'langchain-seed[server]' "
                                  f"({error})", name=error.name) from error

    service = SeedService(llm, settings or ServerSettings(), chat)

    def error_response(error: APIError) -> Any:
        if error.status != 500:
            service.metrics.refused += 1
        return JSONResponse(error.body(), status_code=error.status)

    async def generate(request: Any, kind: str) -> Any:
        service.metrics.requests += 1
        try:
            service.authorize(request.headers)
            params = service.parse(kind, await _read_json(request, service.settings.max_body_bytes))
            job = await service.admit_async(kind, params)
        except APIError as error:
            return error_response(error)
        if job.stream:
            # The background close also covers a client gone before the stream's first step.
            return StreamingResponse(service.stream(job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(job.run.close))
        try:
            body = await _unless_disconnected(request, service.respond(job))
        except ClientDisconnected:
            service.note_disconnect(job)
            return JSONResponse({"error": "client disconnected"}, status_code=499)
        except Exception as error:
            service.metrics.failed += 1
            logger.error("%s failed: %s", job.request_id, type(error).__name__)
            return JSONResponse(APIError(500, f"generation failed: {error}", type="server_error").body(),
                                status_code=500)
        return JSONResponse(body)

    async def completions(request: Any) -> Any:
        return await generate(request, "completions")

    async def chat_completions(request: Any) -> Any:
        return await generate(request, "chat")

    async def models(request: Any) -> Any:
        try:
            service.authorize(request.headers)
        except APIError as error:
            return error_response(error)
        return JSONResponse(service.models())

    async def health(request: Any) -> Any:
        return JSONResponse(service.health())

    async def http_error(request: Any, error: Any) -> Any:
        return JSONResponse(APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}",
                                     code=str(error.status_code)).body(), status_code=error.status_code)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app


def serve(llm: SeedLLM, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          **settings: Any) -> None:
    """Serve `llm` over HTTP until interrupted (blocking). `settings`: `ServerSettings` fields."""
    import uvicorn  # lazy: the optional server extra

    if host not in LOOPBACK_HOSTS and not settings.get("api_key"):
        logger.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    uvicorn.run(create_app(llm, ServerSettings(**settings)), host=host, port=port, log_level=log_level)
