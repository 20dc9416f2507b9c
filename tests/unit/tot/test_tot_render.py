"""The tree as data (dict / JSON) and as pictures (terminal text, Mermaid)."""

from __future__ import annotations

import json

import pytest

from langchain_seed.tot import ThoughtTree, TreeOfThoughts

from tot_fakes import LEVEL1, LEVEL2, QUESTION


@pytest.fixture
def result(scripted_llm):
    return TreeOfThoughts(llm=scripted_llm, n_select=1).invoke(QUESTION, return_tree=True)


def test_json_holds_every_state(result):
    data = json.loads(result.tree.to_json())
    assert data["question"] == QUESTION and data["answer"] == "10" and data["search"] == "bfs"
    nodes = data["nodes"]
    assert len(nodes) == 7 and nodes[0]["parent_id"] is None and nodes[0]["depth"] == 0
    first = nodes[1]
    assert first["thought"] == LEVEL1[0] and first["parent_id"] == 0 and first["depth"] == 1
    assert first["score"] == 9.0 and first["scores"] == [9.0] and first["kept"] is True
    assert first["state_text"] == f"Step 1: {LEVEL1[0]}\n"
    assert [n["kept"] for n in nodes[1:4]] == [True, False, False]
    best = nodes[data["best_id"]]
    assert best["steps"] == [LEVEL1[0], LEVEL2[0]] and best["parent_id"] == 1
    assert data["best_path"] == [0, 1, data["best_id"]]


def test_json_round_trip(result):
    tree = result.tree
    again = ThoughtTree.from_json(tree.to_json())
    assert again.to_dict() == tree.to_dict()
    assert again.render() == tree.render()


def test_terminal_rendering(result):
    text = result.tree.render()
    lines = text.splitlines()
    assert lines[0] == f"Question: {QUESTION}"
    assert lines[1] == "[0] (root)"
    assert f"├── [1] 9.0 * {LEVEL1[0]}" in text
    assert f"├── [2] 1.0   {LEVEL1[1]}" in text  # pruned: no kept mark
    assert f"└── [3] 5.0   {LEVEL1[2]}" in text
    best_line = next(line for line in lines if "<= best" in line)
    assert best_line.startswith("│   ├── [4] 10.0 * ") and LEVEL2[0] in best_line
    assert lines[-1] == "Answer: 10"
    assert str(result.tree) == text


def test_terminal_rendering_shortens_long_thoughts():
    tree = ThoughtTree.start("q")
    tree.add(tree.root, "word " * 100, "")
    line = tree.render(width=60).splitlines()[2]
    assert len(line) <= 60 and line.endswith("...")


def test_mermaid_export(result):
    mermaid = result.tree.to_mermaid()
    lines = mermaid.splitlines()
    assert lines[0] == "flowchart TD"
    assert f'    n1["9.0 | {LEVEL1[0]}"]' in lines
    for child in range(1, 7):
        parent = result.tree.nodes[child].parent_id
        assert f"    n{parent} --> n{child}" in lines
    best = result.tree.best_id
    assert f"    class n{best} best" in lines
    assert "    class n1 kept" in lines
    assert any(line.startswith("    class n2,n3") and line.endswith("pruned") for line in lines)


def test_mermaid_escapes_labels():
    tree = ThoughtTree.start('Say "hi" <b> #### 5')
    tree.add(tree.root, 'a "quoted" thought', "")
    mermaid = tree.to_mermaid()
    assert '"hi"' not in mermaid and "<b>" not in mermaid
    assert "#quot;hi#quot;" in mermaid and "#lt;b#gt;" in mermaid and "#35;#35;" in mermaid


def test_markdown_repr_is_a_mermaid_block(result):
    markdown = result.tree._repr_markdown_()
    assert markdown.startswith("```mermaid\nflowchart TD\n") and markdown.endswith("\n```")


def test_tree_navigation(result):
    tree = result.tree
    assert [n.id for n in tree.children(0)] == [1, 2, 3]
    assert [n.id for n in tree.best_path] == [0, 1, tree.best_id]
    assert tree.best is tree.nodes[tree.best_id] and len(tree) == 7
