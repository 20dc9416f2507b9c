"""Pictures of a :class:`~langchain_seed.tot.tree.ThoughtTree`: terminal text and Mermaid.

Terminal::

    Question: Janet has 3 apples...
    [0] (root)
    ├── [1] 7.0 * How many apples does she buy? She buys 2.
    │   └── [3] 9.0 * How many in all? 3 + 2 = 5.  <= best
    └── [2] 2.0   What colour are they? Red.
    Answer: 5

``*`` marks kept states (selected by BFS, entered by DFS); unscored states show ``-``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_seed.tot.tree import ThoughtNode, ThoughtTree

_BRANCH, _LAST, _PIPE, _SPACE = "├── ", "└── ", "│   ", "    "


def shorten(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters (``...`` when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: max(limit - 3, 0)] + "..."


def score_label(node: ThoughtNode) -> str:
    """``7.0``, or ``-`` when the state was never scored."""
    return "-" if node.score is None else f"{node.score:.1f}"


def render_text(tree: ThoughtTree, width: int = 100) -> str:
    """Indented tree with ids, scores, kept marks and the best state."""
    lines = [f"Question: {shorten(tree.question, width - 10)}", "[0] (root)"]
    _render_children(tree, tree.root.id, "", width, lines)
    if tree.answer is not None:
        lines.append(f"Answer: {shorten(tree.answer, width - 8)}")
    return "\n".join(lines)


def _render_children(
    tree: ThoughtTree, node_id: int, prefix: str, width: int, lines: list[str]
) -> None:
    """Append the lines of ``node_id``'s subtree below it."""
    children = tree.children(node_id)
    for position, child in enumerate(children):
        last = position == len(children) - 1
        head = f"{prefix}{_LAST if last else _BRANCH}[{child.id}] {score_label(child)} "
        head += "* " if child.kept else "  "
        best = "  <= best" if child.id == tree.best_id else ""
        lines.append(head + shorten(child.thought, max(width - len(head) - len(best), 10)) + best)
        _render_children(tree, child.id, prefix + (_SPACE if last else _PIPE), width, lines)


def mermaid_label(text: str) -> str:
    """Text made safe inside a quoted Mermaid label (entity codes for # " < >)."""
    text = text.replace("#", "#35;")
    for char, code in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def render_mermaid(tree: ThoughtTree, label_chars: int = 60) -> str:
    """Mermaid ``flowchart TD`` source; classes ``kept``, ``pruned``, ``best``."""
    lines = ["flowchart TD"]
    root_label = "Question: " + shorten(tree.question, label_chars)
    lines.append(f'    n0["{mermaid_label(root_label)}"]')
    for node in tree.nodes[1:]:
        label = f"{score_label(node)} | {shorten(node.thought, label_chars)}"
        lines.append(f'    n{node.id}["{mermaid_label(label)}"]')
    for node in tree.nodes[1:]:
        lines.append(f"    n{node.parent_id} --> n{node.id}")
    lines.extend(_mermaid_classes(tree))
    return "\n".join(lines)


def _mermaid_classes(tree: ThoughtTree) -> list[str]:
    """Class definitions and assignments for kept, pruned and best states."""
    lines = [
        "    classDef kept fill:#e6f4ea,stroke:#1e8e3e",
        "    classDef pruned fill:#f1f3f4,stroke:#9aa0a6,color:#5f6368",
        "    classDef best fill:#fce8b2,stroke:#f29900,stroke-width:3px",
    ]
    groups: dict[str, list[str]] = {"kept": [], "pruned": [], "best": []}
    for node in tree.nodes[1:]:
        name = "best" if node.id == tree.best_id else "kept" if node.kept else "pruned"
        groups[name].append(f"n{node.id}")
    for name, ids in groups.items():
        if ids:
            lines.append(f"    class {','.join(ids)} {name}")
    return lines
