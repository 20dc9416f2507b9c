"""A user's own prompts for `langchain-seed distill --prompts FILE`.

FILE is JSON lines, one prompt a line, each one of:

- a string: a raw prompt (what `SeedLLM` receives), family ``text``;
- a list of ``{"role": ..., "content": ...}`` messages: a chat (what `ChatSeed` receives,
  rendered through the tokenizer's chat template), family ``chat``;
- an object ``{"prompt": <string or message list>, "family": "<name>"}`` to report
  acceptance per family of the app's own (e.g. "summarise", "router", "qa").

Blank lines are skipped; anything else is refused with a `PromptFileError` naming the file
and the line. Every fifth prompt of a family (by content hash, at least one where a family
has two or more) is held out: the draft never trains on it, and acceptance before and after
is measured on it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_seed.training.mix import MixPrompt, render

ROLES = ("system", "user", "assistant", "tool")
HELDOUT_EVERY = 5


class PromptFileError(ValueError):
    """A prompt file that cannot be used: the message names the file and the line."""


def _messages(value: list, where: str) -> tuple[tuple[str, str], ...]:
    if not value:
        raise PromptFileError(f"{where}: an empty message list")
    messages = []
    for i, message in enumerate(value, start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise PromptFileError(f"{where}: message {i} is not an object with 'role' and 'content' strings")
        if message["role"] not in ROLES:
            raise PromptFileError(f"{where}: message {i} has role {message['role']!r}; valid: {', '.join(ROLES)}")
        messages.append((message["role"], message["content"]))
    return tuple(messages)


def parse_line(value: Any, where: str) -> MixPrompt:
    """One decoded line as a prompt (split not decided yet)."""
    family = None
    if isinstance(value, dict):
        if set(value) - {"prompt", "family"} or "prompt" not in value:
            raise PromptFileError(f"{where}: an object needs a 'prompt' (and optionally a 'family'), "
                                  f"got keys {sorted(value)}")
        family = value.get("family")
        if family is not None and not (isinstance(family, str) and family.strip()):
            raise PromptFileError(f"{where}: 'family' must be a non-empty string")
        value = value["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(f"{where}: an empty prompt")
        return MixPrompt(family or "text", f"line:{where}", "train", text=value)
    if isinstance(value, list):
        return MixPrompt(family or "chat", f"line:{where}", "train", messages=_messages(value, where))
    raise PromptFileError(f"{where}: expected a string, a list of chat messages or an object with 'prompt'; "
                          f"got {type(value).__name__}")


def load_prompt_file(path: str | Path) -> list[MixPrompt]:
    """The prompts of a JSON-lines file, split into train and held out per family."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file (--prompts takes a JSON-lines file of prompts)")
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{where}: not JSON ({error.msg})") from None
            prompts.append(parse_line(value, where))
    if not prompts:
        raise PromptFileError(f"{path}: the file holds no prompts")
    return split_prompts(prompts)


def split_prompts(prompts: Sequence[MixPrompt]) -> list[MixPrompt]:
    """Every `HELDOUT_EVERY`-th prompt of a family, in content-hash order, held out (at least one
    of a family of two or more); duplicates of a held-out prompt are held out too."""
    by_family: dict[str, list[MixPrompt]] = {}
    for prompt in prompts:
        by_family.setdefault(prompt.family, []).append(prompt)
    heldout_keys: set[str] = set()
    for members in by_family.values():
        keys = sorted({p.key for p in members})
        if len(keys) >= 2:
            heldout_keys.update(keys[:: HELDOUT_EVERY])
    return [MixPrompt(p.family, p.unit, "heldout" if p.key in heldout_keys else "train", p.text, p.messages)
            for p in prompts]


def check_lengths(prompts: Sequence[MixPrompt], tokenizer: Any, context: int, room: int) -> None:
    """Refuse prompts that leave fewer than ``room`` positions (the answer's tokens, and the
    measurement's answer and draft chain) in the target's context window."""
    for prompt in prompts:
        length = len(tokenizer(render(prompt, tokenizer), add_special_tokens=False).input_ids)
        if length + room > context:
            raise PromptFileError(f"{prompt.unit.removeprefix('line:')}: the prompt is {length} tokens; with "
                                  f"{room} for the answer it does not fit the target's context of {context} tokens")
