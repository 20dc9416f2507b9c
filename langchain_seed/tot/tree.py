"""The reasoning tree as data: states with their parent, thought, scores and fate."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_seed.tot.render import render_mermaid, render_text


@dataclass
class ThoughtNode:
    """One state of the tree: the root (the question) or a thought added to its parent."""

    id: int
    """Position in :attr:`ThoughtTree.nodes`; the root is 0."""
    parent_id: int | None
    """The parent state's id (None for the root)."""
    depth: int
    """Number of steps in the state (0 for the root)."""
    thought: str
    """The step this state added (empty for the root)."""
    steps: tuple[str, ...]
    """Every step from the root to this state."""
    state_text: str
    """The full state as the prompts show it (``Step 1: ...`` lines)."""
    score: float | None = None
    """Evaluation on a 0-10 scale (mean of the samples, or vote share x 10)."""
    scores: list[float] = field(default_factory=list)
    """Individual value samples, or ``[votes]`` for the vote evaluator."""
    kept: bool = False
    """Selected by BFS / entered by DFS (the root is always kept)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view."""
        data = asdict(self)
        data["steps"] = list(self.steps)
        return data


@dataclass
class ThoughtTree:
    """Every state a search created, in creation order, plus the chosen one.

    Render it with :meth:`render` (terminal), :meth:`to_mermaid` (notebooks; Jupyter
    shows it through ``_repr_markdown_``), or export it with :meth:`to_dict` /
    :meth:`to_json`.
    """

    question: str
    """The question at the root."""
    nodes: list[ThoughtNode] = field(default_factory=list)
    """All states; ``nodes[i].id == i``."""
    search: str = ""
    """The search that built the tree (``bfs`` / ``dfs``)."""
    best_id: int | None = None
    """The state the answer was built from."""
    answer: str | None = None
    """The final answer, once known."""

    @classmethod
    def start(cls, question: str, search: str = "") -> ThoughtTree:
        """A tree holding only its root."""
        root = ThoughtNode(0, None, 0, "", (), "", kept=True)
        return cls(question=question, nodes=[root], search=search)

    @property
    def root(self) -> ThoughtNode:
        """The root state (the bare question)."""
        return self.nodes[0]

    @property
    def best(self) -> ThoughtNode:
        """The chosen state (the root if the search found nothing better)."""
        return self.nodes[self.best_id or 0]

    def add(self, parent: ThoughtNode, thought: str, state_text: str) -> ThoughtNode:
        """Create the child state of ``parent`` that adds ``thought``."""
        node = ThoughtNode(
            id=len(self.nodes), parent_id=parent.id, depth=parent.depth + 1,
            thought=thought, steps=(*parent.steps, thought), state_text=state_text,
        )
        self.nodes.append(node)
        return node

    def children(self, node_id: int) -> list[ThoughtNode]:
        """The states grown from ``node_id``, in creation order."""
        return [node for node in self.nodes if node.parent_id == node_id]

    def path(self, node_id: int) -> list[ThoughtNode]:
        """The states from the root to ``node_id``."""
        path = [self.nodes[node_id]]
        while path[-1].parent_id is not None:
            path.append(self.nodes[path[-1].parent_id])
        return path[::-1]

    @property
    def best_path(self) -> list[ThoughtNode]:
        """The states from the root to the chosen one."""
        return self.path(self.best.id)

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        return self.render()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view: question, answer, search, best id and path, nodes."""
        return {
            "question": self.question,
            "answer": self.answer,
            "search": self.search,
            "best_id": self.best_id,
            "best_path": [node.id for node in self.best_path],
            "nodes": [node.to_dict() for node in self.nodes],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The tree as JSON (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThoughtTree:
        """Rebuild a tree from :meth:`to_dict` output."""
        nodes = [_node_from_dict(item) for item in data["nodes"]]
        return cls(
            question=data["question"], nodes=nodes, search=data.get("search", ""),
            best_id=data.get("best_id"), answer=data.get("answer"),
        )

    @classmethod
    def from_json(cls, text: str) -> ThoughtTree:
        """Rebuild a tree from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def render(self, width: int = 100) -> str:
        """Indented terminal view: ids, scores, ``*`` on kept states, the best marked."""
        return render_text(self, width=width)

    def to_mermaid(self, label_chars: int = 60) -> str:
        """Mermaid flowchart source (kept, pruned and best states styled)."""
        return render_mermaid(self, label_chars=label_chars)

    def _repr_markdown_(self) -> str:
        """Jupyter shows the tree as a Mermaid diagram."""
        return f"```mermaid\n{self.to_mermaid()}\n```"


def _node_from_dict(item: dict[str, Any]) -> ThoughtNode:
    """One node from its plain-data view."""
    fields: Sequence[str] = (
        "id", "parent_id", "depth", "thought", "state_text", "score", "scores", "kept",
    )
    return ThoughtNode(steps=tuple(item["steps"]), **{name: item[name] for name in fields})
