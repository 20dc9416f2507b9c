"""What a server serves and the limits it enforces, and the counters it keeps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    """What the server serves and the limits it enforces on each request."""

    model_name: str | None = None
    """The model id clients must send (`GET /v1/models` lists it); None: the LLM's `model_name`."""
    api_key: str | None = None
    """Clients must send `Authorization: Bearer <api_key>`; None: no key needed."""
    max_body_bytes: int = 1 << 20
    """Largest request body; larger ones get 413."""
    max_tokens_limit: int = 4096
    """Largest `max_tokens` a request may ask for."""
    max_n: int = 16
    """Largest `n` (choices per prompt)."""
    max_prompts: int = 32
    """Most prompts in one `/v1/completions` request."""
    default_max_tokens: int | None = None
    """Chat `max_tokens` when the request gives none; None: the LLM's `max_tokens`. Always
    clipped to what fits in the context window."""
    log_prompts: bool = False
    """Log prompt and completion text (off: only counts and timings are logged)."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens_limit", "max_n", "max_prompts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None")


@dataclass
class ServerMetrics:
    """Counters of a running server (read by tests and `GET /health`)."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    """Requests whose client went away before the end; their generations were cancelled."""
    refused: int = 0
    failed: int = 0
