"""BFS and DFS: selection, pruning, backtracking, and one batched call per level and role."""

from __future__ import annotations

import re

from langchain_seed.tot import StateEvaluator, ThoughtGenerator, abfs, bfs, dfs

from tot_fakes import (
    LEVEL1,
    LEVEL2,
    QUESTION,
    ScriptedLLM,
    gsm8k_reply,
    roles_of_calls,
    tree_reply,
)


def make(llm, generator="propose", evaluator="value", k=3, n_evaluate=1):
    return (ThoughtGenerator(llm, "gsm8k", generator, k=k),
            StateEvaluator(llm, "gsm8k", evaluator, n_evaluate=n_evaluate))


def test_bfs_keeps_the_highest_valued_states(scripted_llm):
    result = bfs(QUESTION, *make(scripted_llm), depth=2, n_select=1)
    tree = result.tree
    level1 = tree.children(0)
    assert [n.thought for n in level1] == LEVEL1
    assert [n.kept for n in level1] == [True, False, False]  # 9 beats 5 and 1
    assert tree.children(level1[1].id) == [] and tree.children(level1[2].id) == []
    level2 = tree.children(level1[0].id)
    assert [n.score for n in level2] == [10.0, 2.0, 4.0]
    assert result.best.thought == LEVEL2[0] and result.best.steps == (LEVEL1[0], LEVEL2[0])
    assert tree.best_id == result.best.id
    assert result.trace[0]["selected"] == [level1[0].id]
    assert result.trace[1]["scores"] == [10.0, 2.0, 4.0]


def test_bfs_n_select_two_keeps_two_per_level(scripted_llm):
    result = bfs(QUESTION, *make(scripted_llm), depth=2, n_select=2)
    kept1 = [n.thought for n in result.tree.children(0) if n.kept]
    assert kept1 == [LEVEL1[0], LEVEL1[2]]  # scores 9 and 5
    assert sum(n.kept for n in result.tree.nodes if n.depth == 2) == 2


def test_bfs_each_level_is_one_call_for_thoughts_and_one_for_values(scripted_llm):
    bfs(QUESTION, *make(scripted_llm), depth=2, n_select=2)
    assert roles_of_calls(scripted_llm.calls) == ["propose", "value", "propose", "value"]
    assert [len(call) for call in scripted_llm.calls] == [1, 3, 2, 6]


def test_bfs_with_sample_is_one_call_per_level_too(scripted_llm):
    bfs(QUESTION, *make(scripted_llm, generator="sample"), depth=2, n_select=2)
    assert roles_of_calls(scripted_llm.calls) == ["sample", "value", "sample", "value"]
    assert [len(call) for call in scripted_llm.calls] == [3, 3, 6, 6]


def last_steps_by_choice(prompt: str) -> dict[str, str]:
    """{last step text: choice number} of a vote prompt."""
    blocks = re.split(r"^Choice (\d+):\n", prompt, flags=re.M)[1:]
    return {re.findall(r"^Step \d+: (.*)$", body, re.M)[-1]: number
            for number, body in zip(blocks[::2], blocks[1::2])}


def test_bfs_with_vote_selects_the_majority():
    def reply(prompt, i):
        if prompt.endswith("Best choice: "):
            choices = last_steps_by_choice(prompt)
            return choices.get(LEVEL1[2]) or choices.get(LEVEL2[1])
        return gsm8k_reply(prompt, i)

    llm = ScriptedLLM(reply=reply)
    result = bfs(QUESTION, *make(llm, evaluator="vote", n_evaluate=3), depth=2, n_select=1)
    level1 = result.tree.children(0)
    assert [n.kept for n in level1] == [False, False, True]
    assert level1[2].score == 10.0 and level1[2].scores == [3.0]
    assert result.best.thought == LEVEL2[1]
    assert roles_of_calls(llm.calls) == ["propose", "vote", "propose", "vote"]
    assert [len(call) for call in llm.calls] == [1, 3, 1, 3]


def test_bfs_stops_when_no_thoughts_come():
    llm = ScriptedLLM(reply=tree_reply({None: ["only step"]}, {"only step": 6}))
    result = bfs(QUESTION, *make(llm), depth=3)
    assert result.best.thought == "only step"
    assert roles_of_calls(llm.calls) == ["propose", "value", "propose"]


DFS_TREE = {
    None: ["good start", "fair start", "bad start"],
    "good start": ["dead end a", "dead end b"],
    "fair start": ["weak finish", "strong finish"],
}
DFS_VALUES = {"good start": 9, "fair start": 6, "bad start": 1, "dead end a": 2,
              "dead end b": 3, "weak finish": 4, "strong finish": 8}


def test_dfs_backtracks_below_the_threshold():
    llm = ScriptedLLM(reply=tree_reply(DFS_TREE, DFS_VALUES))
    result = dfs(QUESTION, *make(llm), depth=2, value_threshold=5)
    assert result.best.steps == ("fair start", "strong finish")
    by_thought = {n.thought: n for n in result.tree.nodes}
    assert by_thought["good start"].kept and by_thought["fair start"].kept
    assert not by_thought["bad start"].kept  # below the threshold, never entered
    assert not by_thought["dead end a"].kept and not by_thought["dead end b"].kept
    assert {"backtrack": by_thought["good start"].id} in result.trace
    # each expansion: one call for thoughts, one for values
    assert roles_of_calls(llm.calls) == ["propose", "value"] * 3
    assert llm.calls[2] == [llm.calls[2][0]] and "Step 1: good start" in llm.calls[2][0]
    assert "Step 1: fair start" in llm.calls[4][0]


def test_dfs_respects_max_states():
    llm = ScriptedLLM(reply=tree_reply(DFS_TREE, DFS_VALUES))
    result = dfs(QUESTION, *make(llm), depth=2, value_threshold=0, max_states=1)
    assert sum(n.kept for n in result.tree.nodes[1:]) == 1
    assert result.best.thought == "good start"
    assert {"stop": "max_states", "visited": 1} in result.trace


def test_dfs_with_nothing_above_threshold_returns_the_root():
    llm = ScriptedLLM(reply=tree_reply(DFS_TREE, DFS_VALUES))
    result = dfs(QUESTION, *make(llm), depth=2, value_threshold=9.5)
    assert result.best.id == 0 and len(llm.calls) == 2


async def test_async_bfs_matches_sync(scripted_llm):
    sync = bfs(QUESTION, *make(scripted_llm), depth=2, n_select=1)
    other = ScriptedLLM(reply=gsm8k_reply)
    asynchronous = await abfs(QUESTION, *make(other), depth=2, n_select=1)
    assert asynchronous.tree.to_dict() == sync.tree.to_dict()
    assert other.calls == [] and len(other.async_calls) == 4
