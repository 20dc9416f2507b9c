"""Spies on the engine's request handles, for tests of the LangChain face."""

from __future__ import annotations


def spy_handles(engine, monkeypatch) -> list:
    """The request handles of every `submit_many` call on `engine` from now on, in order."""
    handles: list = []
    submit_many = engine.submit_many

    def spy(*args, **kwargs):
        new = submit_many(*args, **kwargs)
        handles.extend(new)
        return new

    monkeypatch.setattr(engine, "submit_many", spy)
    return handles
