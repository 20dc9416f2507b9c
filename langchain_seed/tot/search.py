"""Search over states: generation -> evaluation -> selection, returning a trace.

- :func:`bfs`: level by level, every kept state grows its thoughts in ONE LLM call,
  every new state is scored in ONE LLM call, and the best ``n_select`` are kept.
- :func:`dfs`: grows the most promising state first; children scored below
  ``value_threshold`` are pruned; when a state has no child left it backtracks; it
  stops at the first state of full depth or after ``max_states`` visited states.

Both return a :class:`SearchResult`: the best state, the whole tree (every state with
its scores and kept flag) and a princeton-style trace of the steps taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_seed.tot.driver import Plan, arun_plan, run_plan
from langchain_seed.tot.evaluator import Evaluation, StateEvaluator
from langchain_seed.tot.generator import ThoughtGenerator
from langchain_seed.tot.tree import ThoughtNode, ThoughtTree


@dataclass
class SearchResult:
    """What a search found."""

    best: ThoughtNode
    """The chosen state (the root if nothing was found)."""
    tree: ThoughtTree
    """Every state created."""
    trace: list[dict[str, Any]] = field(default_factory=list)
    """One record per generation -> evaluation -> selection step."""


def grow(
    tree: ThoughtTree,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    parents: Sequence[ThoughtNode],
) -> Plan[list[ThoughtNode]]:
    """Generate the children of ``parents`` (one call) and score them (one call)."""
    question = tree.question
    thoughts = yield from generator.plan(question, [parent.steps for parent in parents])
    children = [
        tree.add(parent, thought, generator.task.format_steps((*parent.steps, thought)))
        for parent, new_thoughts in zip(parents, thoughts)
        for thought in new_thoughts
    ]
    if children:
        evaluations = yield from evaluator.plan(question, [child.steps for child in children])
        for child, evaluation in zip(children, evaluations):
            _apply(child, evaluation)
    return children


def _apply(node: ThoughtNode, evaluation: Evaluation) -> None:
    """Copy an evaluation onto a state."""
    node.score = evaluation.score
    node.scores = list(evaluation.samples)


def best_first(nodes: Sequence[ThoughtNode]) -> list[ThoughtNode]:
    """States by score, highest first; ties keep creation order."""
    return sorted(nodes, key=lambda node: -(node.score or 0.0))


def bfs_plan(
    question: str,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    depth: int,
    n_select: int,
) -> Plan[SearchResult]:
    """Breadth-first search keeping the ``n_select`` best states per level."""
    tree = ThoughtTree.start(question, search="bfs")
    frontier = [tree.root]
    trace: list[dict[str, Any]] = []
    for level in range(1, depth + 1):
        children = yield from grow(tree, generator, evaluator, frontier)
        if not children:
            trace.append({"step": level, "parents": [n.id for n in frontier], "children": []})
            break
        selected = best_first(children)[:n_select]
        for node in selected:
            node.kept = True
        trace.append(_bfs_record(level, frontier, children, selected))
        frontier = selected
    best = best_first(frontier)[0]
    tree.best_id = best.id
    return SearchResult(best, tree, trace)


def _bfs_record(
    level: int,
    parents: Sequence[ThoughtNode],
    children: Sequence[ThoughtNode],
    selected: Sequence[ThoughtNode],
) -> dict[str, Any]:
    """Trace record of one BFS level."""
    return {
        "step": level,
        "parents": [node.id for node in parents],
        "children": [node.id for node in children],
        "thoughts": [node.thought for node in children],
        "scores": [node.score for node in children],
        "selected": [node.id for node in selected],
    }


@dataclass
class _DFSState:
    """What a depth-first search carries between recursive visits."""

    tree: ThoughtTree
    generator: ThoughtGenerator
    evaluator: StateEvaluator
    depth: int
    value_threshold: float
    max_states: int
    visited: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)


def dfs_plan(
    question: str,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    depth: int,
    value_threshold: float,
    max_states: int,
) -> Plan[SearchResult]:
    """Depth-first search with pruning below ``value_threshold`` and backtracking."""
    tree = ThoughtTree.start(question, search="dfs")
    search = _DFSState(tree, generator, evaluator, depth, value_threshold, max_states)
    found = yield from _visit(search, tree.root)
    best = found or _best_visited(tree)
    tree.best_id = best.id
    return SearchResult(best, tree, search.trace)


def _visit(search: _DFSState, node: ThoughtNode) -> Plan[ThoughtNode | None]:
    """Explore below ``node``; the first full-depth state found, or None (backtrack)."""
    if node.depth >= search.depth:
        return node
    children = yield from grow(search.tree, search.generator, search.evaluator, [node])
    promising = [c for c in best_first(children) if (c.score or 0.0) >= search.value_threshold]
    search.trace.append(_dfs_record(node, children, promising))
    for child in promising:
        if search.visited >= search.max_states:
            search.trace.append({"stop": "max_states", "visited": search.visited})
            return None
        search.visited += 1
        child.kept = True
        found = yield from _visit(search, child)
        if found is not None:
            return found
    search.trace.append({"backtrack": node.id})
    return None


def _dfs_record(
    node: ThoughtNode, children: Sequence[ThoughtNode], promising: Sequence[ThoughtNode]
) -> dict[str, Any]:
    """Trace record of one DFS expansion."""
    return {
        "expand": node.id,
        "depth": node.depth,
        "children": [child.id for child in children],
        "thoughts": [child.thought for child in children],
        "scores": [child.score for child in children],
        "above_threshold": [child.id for child in promising],
    }


def _best_visited(tree: ThoughtTree) -> ThoughtNode:
    """Fallback when no full-depth state was reached: the deepest, best-scored kept state."""
    kept = [node for node in tree.nodes if node.kept]
    return max(kept, key=lambda node: (node.depth, node.score or 0.0))


# ------------------------------------------------------------------ direct use


def bfs(
    question: str,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    depth: int = 2,
    n_select: int | None = None,
) -> SearchResult:
    """Run :func:`bfs_plan` synchronously (``n_select`` defaults to ``generator.k``)."""
    return run_plan(bfs_plan(question, generator, evaluator, depth, n_select or generator.k))


async def abfs(
    question: str,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    depth: int = 2,
    n_select: int | None = None,
) -> SearchResult:
    """Run :func:`bfs_plan` on the LLM's async API."""
    plan = bfs_plan(question, generator, evaluator, depth, n_select or generator.k)
    return await arun_plan(plan)


def dfs(
    question: str,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    depth: int = 2,
    value_threshold: float | None = None,
    max_states: int = 20,
) -> SearchResult:
    """Run :func:`dfs_plan` synchronously (threshold defaults to the task's)."""
    threshold = generator.task.value_threshold if value_threshold is None else value_threshold
    return run_plan(dfs_plan(question, generator, evaluator, depth, threshold, max_states))


async def adfs(
    question: str,
    generator: ThoughtGenerator,
    evaluator: StateEvaluator,
    depth: int = 2,
    value_threshold: float | None = None,
    max_states: int = 20,
) -> SearchResult:
    """Run :func:`dfs_plan` on the LLM's async API."""
    threshold = generator.task.value_threshold if value_threshold is None else value_threshold
    return await arun_plan(dfs_plan(question, generator, evaluator, depth, threshold, max_states))
