"""The options of one call of `SeedLLM` or `ChatSeed`: the model's fields, overridden per call.

Every check is the engine's own (`engine/options.py`, the one definition of each option),
so a bad value gets the same message in a field, a per-call keyword, the server and the
command line. Only `stop` is the LangChain face's: stop strings are text, not tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_seed.engine.config import SamplingParams, SpeculativeConfig, VerifyPolicy
from langchain_seed.engine.constraints import Constraint
from langchain_seed.engine.options import OPTIONS
from langchain_seed.lc.text import normalize_stop

CALL_OPTIONS = ("decoding", "verify", "k_config", "draft_confidence", "draft_survival", "temperature", "top_p",
                "max_tokens", "seed", "n", "timeout", "constraint")
"""Fields that may be overridden per call through keyword arguments."""


def _check_stop(value: object) -> list[str] | None:
    if value is None:
        return None
    return list(normalize_stop(value))  # type: ignore[arg-type]


def to_constraint(value: object) -> Constraint | None:
    """A constraint as the engine takes it: None, a `Constraint`, `{"regex": pattern}`,
    `{"grammar": lark}` or a JSON schema (any other dict). The plain-dict forms let code that
    knows only LangChain's interface (Tree of Thoughts' evaluators) ask for one."""
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, Mapping) and len(value) == 1 and set(value) <= {"regex", "grammar"}:
        [(kind, text)] = value.items()
        return Constraint.regex(text) if kind == "regex" else Constraint.grammar(text)
    if isinstance(value, Mapping):
        return Constraint.json_schema(value)
    raise ValueError(f"constraint must be None, a JSON schema (dict) or a Constraint (Constraint.json_schema(...), "
                     f".regex(...), .grammar(...)); got {value!r}")


CHECKS: dict[str, Callable[[Any], Any]] = {
    **{name: OPTIONS[name].check for name in (*CALL_OPTIONS, "max_retries") if name in OPTIONS},
    "constraint": to_constraint,
    "stop": _check_stop,
}
"""The check of every field that has one, by name (the pydantic validators and per-call kwargs)."""


@dataclass(frozen=True)
class CallOptions:
    """The options of one call: the model's fields, overridden by the call's kwargs."""

    decoding: str
    verify: VerifyPolicy
    k_config: tuple[int, ...]
    draft_confidence: float
    draft_survival: float
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    n: int
    timeout: float | None
    constraint: Constraint | None = None

    @classmethod
    def of(cls, model: Any, kwargs: Mapping[str, Any], ignored: Sequence[str] = ()) -> CallOptions:
        """`model`'s fields overridden by `kwargs`; unknown keyword arguments are refused."""
        unknown = sorted(k for k in kwargs if k not in CALL_OPTIONS and k not in ignored)
        if unknown:
            raise ValueError(
                f"{type(model).__name__} got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"per-call options are: {', '.join(CALL_OPTIONS)}"
            )
        values = {name: getattr(model, name) for name in CALL_OPTIONS}
        for name in CALL_OPTIONS:
            if name in kwargs:
                values[name] = CHECKS[name](kwargs[name])
        return cls(**values)

    def speculative_config(self) -> SpeculativeConfig:
        return SpeculativeConfig(k_config=self.k_config, verify=self.verify, draft_confidence=self.draft_confidence,
                                 draft_survival=self.draft_survival)

    def sampling_params(self, sample_index: int, stop_callback=None) -> SamplingParams:
        """Sampling of generation `sample_index` of a prompt: seeds differ between samples."""
        seed = None if self.seed is None else (self.seed + sample_index) % 2**63
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=seed,
                              stop_callback=stop_callback, constraint=self.constraint)


def call_fields(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The per-call overrides among `kwargs`, checked, by field name (the rest are left out)."""
    return {name: CHECKS[name](value) for name, value in kwargs.items() if name in CALL_OPTIONS}


def default_config(fields: Mapping[str, Any]) -> SpeculativeConfig:
    """The engine's default `SpeculativeConfig` from a model's constructor fields."""
    values = {name: CHECKS[name](fields.get(name, OPTIONS[name].default))
              for name in ("k_config", "verify", "draft_confidence", "draft_survival")}
    return SpeculativeConfig(**values)
