"""An OpenAI-compatible HTTP service over `SeedLLM` and `ChatSeed`.

- `protocol`: the wire format (request models, errors, response pieces);
- `settings`: what is served and the limits enforced;
- `service`: parse, check, admit and stream requests, free of HTTP framework types;
- `app`: the ASGI application and `serve` (needs the `server` extra: starlette, uvicorn).
"""

from langchain_seed.serving.app import create_app, serve
from langchain_seed.serving.service import SeedService
from langchain_seed.serving.settings import ServerMetrics, ServerSettings

__all__ = ["SeedService", "ServerMetrics", "ServerSettings", "create_app", "serve"]
