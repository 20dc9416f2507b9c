"""The `langchain-seed` command: shared options from engine/options.py, the default pair's
tuned settings applied the same way by run, bench and serve, and the command modules' imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import langchain_seed.pair.assemble
import langchain_seed.pair.paths
from langchain_seed.cli import bench_models, build_parser, main, serve
from langchain_seed.cli.common import decoding_fields
from langchain_seed.engine.options import OPTIONS, tree_size
from langchain_seed.pair.paths import (
    DEFAULT_PAIR_DRAFT_CONFIDENCE,
    DEFAULT_PAIR_K_CONFIG,
    DEFAULT_PAIR_OPTIONS,
)

from tiny_llama import make_tiny_llama

CLI_DIR = Path(langchain_seed.cli.__file__).parent


def _parse(argv):
    return build_parser().parse_args(argv)


def test_help_lists_every_command_and_the_shared_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("run", "bench", "models", "distill", "serve"))
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--k-config" in out and "--target" in out and "--breadth" in out
    assert OPTIONS["draft_confidence"].help.split(";")[0] in " ".join(out.split())


@pytest.mark.parametrize("command", ["run", "bench", "serve"])
def test_a_bad_option_is_refused_with_the_options_own_message(command, capsys):
    with pytest.raises(SystemExit):
        _parse([command, "--k-config", "1,0"])
    assert "k_config entries must be positive ints" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([command, "--draft-confidence", "1.5"])
    assert "draft_confidence must be a number in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "bench", "serve"])
def test_the_default_pairs_tuned_settings_apply_alike_in_run_bench_and_serve(command):
    def tree(fields):
        return {name: fields[name] for name in DEFAULT_PAIR_OPTIONS if name in fields}

    args = _parse([command])
    assert tree(decoding_fields(args, default_pair=True)) == DEFAULT_PAIR_OPTIONS
    assert tree(decoding_fields(args, default_pair=False)) == {}
    given = _parse([command, "--k-config", "2,1", "--draft-confidence", "0.1"])
    assert tree(decoding_fields(given, default_pair=True)) == {"k_config": (2, 1), "draft_confidence": 0.1}


def test_bench_seed_tree_is_the_pairs_on_the_default_pair_and_the_options_default_elsewhere():
    survival = OPTIONS["draft_survival"].default
    assert bench_models._seed_tree(_parse(["bench"])) == {**DEFAULT_PAIR_OPTIONS, "draft_survival": survival}
    assert bench_models._seed_tree(_parse(["bench", "--target", "dir"])) == {
        "k_config": OPTIONS["k_config"].default, "draft_confidence": OPTIONS["draft_confidence"].default,
        "draft_survival": survival}
    assert bench_models._seed_tree(_parse(["bench", "--draft-survival", "0"]))["draft_survival"] == 0.0


def test_serve_on_the_default_pair_uses_its_tuned_draft_tree(tmp_path, monkeypatch):
    """`langchain-seed serve` with no --k-config serves the pair's tuned tree (a tiny pair stands in)."""
    pytest.importorskip("starlette")
    from langchain_seed.serving import create_app

    target_dir = make_tiny_llama(tmp_path / "target")
    draft_dir = make_tiny_llama(tmp_path / "draft", layers=1, seed=1)
    monkeypatch.setattr(langchain_seed.pair.assemble, "ensure_default_pair", lambda *a, **k: (target_dir, draft_dir))
    monkeypatch.setattr(langchain_seed.pair.paths, "default_seed_draft_dir", lambda: None)
    args = _parse(["serve", "--default-max-tokens", "8"])
    llm = serve.llm_from_args(args)
    try:
        assert llm.k_config == DEFAULT_PAIR_K_CONFIG and llm.draft_confidence == DEFAULT_PAIR_DRAFT_CONFIDENCE
        assert llm.max_tokens == 8
        service = create_app(llm, serve.settings_from_args(args)).state.service
        assert service.draft_positions == tree_size(DEFAULT_PAIR_K_CONFIG)
    finally:
        llm.engine.close()
    own = serve.llm_from_args(_parse(["serve", "--target", str(target_dir), "--draft", str(draft_dir)]))
    try:
        assert own.k_config == OPTIONS["k_config"].default and own.draft_confidence == 0.0
    finally:
        own.engine.close()


def test_command_modules_import_nothing_from_each_other():
    """A command's module imports no other command's, nor another command's helpers
    (``<command>_*.py``, e.g. ``bench_models``); a command and its helpers share theirs."""
    modules = {path.stem for path in CLI_DIR.glob("*.py")} - {"__init__", "__main__", "common"}
    commands = {name for name in modules if not any(name.startswith(f"{other}_") for other in modules)}
    assert {"bench", "run", "serve", "distill", "models"} <= commands

    def family(name: str) -> str:
        return next(command for command in commands if name == command or name.startswith(f"{command}_"))

    for path in CLI_DIR.glob("*.py"):
        if path.stem not in modules:
            continue
        others = {f"langchain_seed.cli.{name}" for name in modules if family(name) != family(path.stem)}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
                assert not others & imported, path.name
