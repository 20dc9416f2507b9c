"""The one definition of every decoding and request option.

Each `Option` holds a name, its type, default, range check, help text, and how it is read
from command-line text. `SpeculativeConfig` and `SamplingParams` (engine/config.py), the
LangChain fields, the server and the command line all check values through `OPTIONS`, so
a bad value gets the same message (a ValueError naming the option) wherever it was written.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DECODING_MODES: tuple[str, ...] = ("autoregressive", "speculative", "scheduled")
VERIFY_POLICIES: tuple[str, ...] = ("rounds", "batched")
ACCEPTANCE_RULES: tuple[str, ...] = ("auto", "greedy", "speculative", "mcsd", "mcsd_without_replacement")

MAX_TREE_NODES = 256
MAX_TREE_DEPTH = 32
MAX_LOOKUP_NGRAM = 4
MAX_N = 64
"""Most generations per prompt (`n`)."""


@dataclass(frozen=True)
class Option:
    """One option: `check` validates a value (ValueError naming the option) and returns it
    normalized; `parse` turns command-line text into a value for `check`."""

    name: str
    type: str
    default: Any
    help: str
    check: Callable[[Any], Any]
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    def __call__(self, value: Any) -> Any:
        return self.check(value)

    def from_text(self, text: str) -> Any:
        """The checked value of command-line `text` (ValueError with the option's message)."""
        return self.check(self.parse(text))


# ------------------------------------------------------------------------------ checks


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise a ValueError naming `name` when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def tree_size(k_config: Sequence[int]) -> int:
    """Number of draft nodes in the tree of `k_config` (the root, the last committed token, excluded)."""
    total, width = 0, 1
    for k in k_config:
        width *= k
        total += width
    return total


def normalize_k_config(k_config: object) -> tuple[int, ...]:
    """Validate a draft-tree shape: children per node at each depth, e.g. (1, 1, 1, 1) or (2, 2, 1).

    An empty tuple means no draft (plain autoregressive decoding).
    """
    if isinstance(k_config, (str, bytes)) or not isinstance(k_config, Sequence):
        raise ValueError(f"k_config must be a sequence of positive ints such as (1, 1, 1, 1); got {k_config!r}")
    values = tuple(k_config)
    require(all(is_int(k) and k >= 1 for k in values),
            f"k_config entries must be positive ints (children per node at each depth); got {k_config!r}")
    require(len(values) <= MAX_TREE_DEPTH, f"k_config is deeper than {MAX_TREE_DEPTH}: {k_config!r}")
    require(tree_size(values) <= MAX_TREE_NODES,
            f"k_config {values!r} makes a tree of {tree_size(values)} nodes; at most {MAX_TREE_NODES} are allowed")
    return values


def check_draft_confidence(value: object) -> float:
    """Validate an adaptive-draft threshold: a number in [0, 1)."""
    require(is_number(value) and 0 <= value < 1,  # type: ignore[operator]
            f"draft_confidence must be a number in [0, 1) (0 drafts the whole tree); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_draft_survival(value: object) -> float:
    """Validate a learnt-depth threshold: a number in [0, 1)."""
    require(is_number(value) and 0 <= value < 1,  # type: ignore[operator]
            f"draft_survival must be a number in [0, 1) (0 never cuts on what verification kept); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        check_choice(name, value, choices)
        return value  # type: ignore[return-value]

    return check


def _int_in(name: str, lowest: int, highest: int | None, what: str) -> Callable[[object], int]:
    def check(value: object) -> int:
        require(is_int(value) and value >= lowest and (highest is None or value <= highest),  # type: ignore[operator]
                f"{name} must be {what}; got {value!r}")
        return value  # type: ignore[return-value]

    return check


def _check_temperature(value: object) -> float:
    require(is_number(value) and math.isfinite(value) and 0 <= value <= 100,  # type: ignore[arg-type,operator]
            f"temperature must be a finite number in [0, 100] (0 is greedy); got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_top_p(value: object) -> float:
    require(is_number(value) and 0 < value <= 1,  # type: ignore[operator]
            f"top_p must be a number in (0, 1]; got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_prompt_lookup_below(value: object) -> float:
    require(is_number(value) and 0 < value <= 1,  # type: ignore[operator]
            f"prompt_lookup_below must be a number in (0, 1] (1 lets every lookup hit override the draft); "
            f"got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_seed(value: object) -> int | None:
    require(value is None or (is_int(value) and 0 <= value < 2**63),  # type: ignore[operator]
            f"seed must be None or an int in [0, 2**63); got {value!r}")
    return value  # type: ignore[return-value]


def _check_timeout(value: object) -> float | None:
    require(value is None or (is_number(value) and value > 0),  # type: ignore[operator]
            f"timeout must be None or a positive number of seconds; got {value!r}")
    return None if value is None else float(value)  # type: ignore[arg-type]


def _check_stop_token_ids(value: object) -> tuple[int, ...]:
    require(not isinstance(value, (str, bytes)) and isinstance(value, Sequence)
            and all(is_int(t) and t >= 0 for t in value),
            f"stop_token_ids must be a sequence of non-negative ints; got {value!r}")
    return tuple(value)  # type: ignore[arg-type]


def _check_bool(name: str) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        require(isinstance(value, bool), f"{name} must be a bool; got {value!r}")
        return value  # type: ignore[return-value]

    return check


# ----------------------------------------------------------------- command-line text
# A parser returns the text itself when it cannot read it, so that the check's message,
# the same as everywhere else, says what is wrong.


def _int_text(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _float_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    return read


def _k_config_text(text: str) -> tuple[int, ...] | str:
    """"1,1,1,1" -> (1, 1, 1, 1); an empty draft tree is not written on a command line."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        return text
    return values or text


def _int_list_text(text: str) -> tuple[int, ...] | str:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        return text


def _bool_text(text: str) -> bool | str:
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower(), text)


def positive_int(text: str) -> int:
    """argparse type of a count that is no option (questions, steps, ...): an int >= 1."""
    return _int_at_least(text, 1, "a positive int")


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0, "an int >= 0")


def _int_at_least(text: str, lowest: int, what: str) -> int:
    value = _int_text(text)
    if not is_int(value) or value < lowest:  # type: ignore[operator]
        raise argparse.ArgumentTypeError(f"must be {what}; got {value!r}")
    return value  # type: ignore[return-value]


# ------------------------------------------------------------------------- the options

_ALL = (
    Option("decoding", "str", "scheduled",
           "how the engine decodes: autoregressive (target alone), speculative (one sequence at a time "
           "with the draft), scheduled (every sequence on one shared scheduler)",
           _choice("decoding", DECODING_MODES), choices=DECODING_MODES),
    Option("verify", "str", "batched",
           "scheduled mode's verification: batched (every pending draft in one target forward) or rounds "
           "(SeeD's policy: one target call per sequence, first come first served)",
           _choice("verify", VERIFY_POLICIES), choices=VERIFY_POLICIES),
    Option("acceptance", "str", "auto",
           "the acceptance rule; auto is greedy at temperature 0 and mcsd above it",
           _choice("acceptance", ACCEPTANCE_RULES), choices=ACCEPTANCE_RULES),
    Option("k_config", "tuple[int, ...]", (1, 1, 1, 1),
           "draft tree: children per node at each depth, e.g. 1,1,1,1 (a chain of 4) or 2,2,1",
           normalize_k_config, _k_config_text, metavar="K,K,..."),
    Option("draft_confidence", "float", 0.0,
           "adaptive draft length: stop drafting deeper where the draft's top probability falls below "
           "this; 0 drafts the whole tree",
           check_draft_confidence, _float_text),
    Option("draft_survival", "float", 0.3,
           "adaptive draft length (greedy requests): stop drafting deeper where the chance, learnt from "
           "what verification kept, that the whole draft survives to the next level falls below this; "
           "0 turns it off",
           check_draft_survival, _float_text),
    Option("max_batch_tokens", "int", 512,
           "token budget of one batched target forward (draft nodes plus pending tokens)",
           _int_in("max_batch_tokens", 1, None, "a positive int"), _int_text),
    Option("compact_slack", "int", 64,
           "cache slots left behind by rejected drafts, per batch, before the cache is compacted",
           _int_in("compact_slack", 0, None, "a non-negative int"), _int_text),
    Option("prompt_lookup", "int", 3,
           f"greedy drafting also looks up n-grams (n from {MAX_LOOKUP_NGRAM} down to this) of the "
           "sequence's own text; 0 turns it off",
           _int_in("prompt_lookup", 0, MAX_LOOKUP_NGRAM, f"an int in [0, {MAX_LOOKUP_NGRAM}] (0 turns it off)"),
           _int_text),
    Option("prompt_lookup_below", "float", 0.7,
           "prompt lookup overrides the draft's best candidate only where its top probability is below this",
           _check_prompt_lookup_below, _float_text),
    Option("temperature", "float", 0.0, "sampling temperature; 0 is greedy",
           _check_temperature, _float_text),
    Option("top_p", "float", 1.0, "nucleus sampling mass in (0, 1]", _check_top_p, _float_text),
    Option("max_tokens", "int", 256, "most new tokens per generation",
           _int_in("max_tokens", 1, None, "a positive int"), _int_text),
    Option("seed", "int | None", None, "seed of the sampling generator; none draws a fresh one",
           _check_seed, _optional(_int_text)),
    Option("n", "int", 1, "generations per prompt",
           _int_in("n (generations per prompt)", 1, MAX_N, f"an int in [1, {MAX_N}]"), _int_text),
    Option("timeout", "float | None", None, "seconds a call may take; none: no limit",
           _check_timeout, _optional(_float_text)),
    Option("max_retries", "int", 0, "retries of a failed generation (a local engine never retries)",
           _int_in("max_retries", 0, None, "a non-negative int"), _int_text),
    Option("stop_token_ids", "tuple[int, ...]", (), "token ids that end a request (kept in the output)",
           _check_stop_token_ids, _int_list_text),
    Option("ignore_eos", "bool", False, "keep generating past the model's EOS tokens",
           _check_bool("ignore_eos"), _bool_text),
)

OPTIONS: dict[str, Option] = {option.name: option for option in _ALL}
"""Every option by name."""

SPECULATIVE_OPTIONS = ("k_config", "acceptance", "verify", "max_batch_tokens", "compact_slack", "prompt_lookup",
                       "prompt_lookup_below", "draft_confidence", "draft_survival")
"""The fields of `SpeculativeConfig`."""
SAMPLING_OPTIONS = ("temperature", "top_p", "max_tokens", "seed", "stop_token_ids", "ignore_eos")
"""The option fields of `SamplingParams` (its `stop_callback` is not an option: it is code)."""
