"""Blocksworld: stack coloured blocks into a goal arrangement with four actions.

The world: blocks stand in stacks on a table, and one hand holds at most one block.
The four classic actions and their preconditions:

- ``pick up X``: the hand is empty, X is on the table, X is clear;
- ``put down X``: the hand holds X (X goes on the table);
- ``stack X on Y``: the hand holds X, Y is clear;
- ``unstack X from Y``: the hand is empty, X is on Y, X is clear.

A problem is an initial arrangement and a goal (blocks that must be on other blocks, the
hand empty at the end). :func:`generate_problem` draws one from a seed, and knows its
optimal plan length by breadth-first search; :func:`simulate` validates a plan step by
step, naming the violated precondition of the first illegal action. In the tree a state
is a partial plan and a thought is one action; :meth:`BlocksworldTask.check` runs the
plan.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from langchain_seed.tot.prompts import fill
from langchain_seed.tot.tasks.base import Task
from langchain_seed.tot.tasks.parsing import clean_line, dedupe

BLOCK_NAMES = ("red", "blue", "orange", "yellow", "green", "white", "black", "purple")
"""Block names, in the order instances take them."""
MAX_BLOCKS = len(BLOCK_NAMES)
VERBS = ("pick up", "put down", "stack", "unstack")
_ACTION = re.compile(
    r"\b(pick\s*-?\s*up|put\s*-?\s*down|unstack|stack)\s+(?:the\s+)?([a-z]+)(?:\s+block)?"
    r"(?:\s+(?:on\s+top\s+of|onto|on|from|off\s+of|off)\s+(?:the\s+)?([a-z]+)(?:\s+block)?)?",
    re.IGNORECASE,
)
_FACT_ON = re.compile(r"the (\w+) block is on (?:top of )?(?:the (\w+) block|(the table))", re.IGNORECASE)


# ------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class Action:
    """One action: ``verb`` (one of :data:`VERBS`), the block moved, and the other block
    (``stack`` and ``unstack`` only)."""

    verb: str
    block: str
    other: str | None = None

    def __str__(self) -> str:
        if self.verb == "stack":
            return f"stack the {self.block} block on the {self.other} block"
        if self.verb == "unstack":
            return f"unstack the {self.block} block from the {self.other} block"
        return f"{self.verb} the {self.block} block"


def parse_action(text: str) -> Action | None:
    """The first action named in ``text`` (``"Unstack the red block from the blue block."``), or None.

    Verbs may be spelled ``pickup`` / ``pick-up``; ``the`` and ``block`` are optional.
    ``stack`` and ``unstack`` need the second block.
    """
    match = _ACTION.search(text)
    if match is None:
        return None
    verb = re.sub(r"[\s-]+", " ", match.group(1).lower())
    verb = {"pickup": "pick up", "putdown": "put down"}.get(verb.replace(" ", ""), verb)
    block, other = match.group(2).lower(), (match.group(3) or "").lower() or None
    if verb in ("stack", "unstack"):
        return Action(verb, block, other) if other else None
    return Action(verb, block)


class IllegalActionError(ValueError):
    """An action whose precondition does not hold; ``precondition`` names it."""

    def __init__(self, action: Action, precondition: str, reason: str, step: int | None = None):
        self.action, self.precondition, self.reason, self.step = action, precondition, reason, step
        where = f"step {step}: " if step is not None else ""
        super().__init__(f"{where}cannot {action}: precondition '{precondition}' does not hold ({reason})")


@dataclass(frozen=True)
class BlocksState:
    """Stacks (each bottom to top, in a canonical order) and the block in the hand."""

    stacks: tuple[tuple[str, ...], ...]
    holding: str | None = None

    @classmethod
    def of(cls, stacks: Iterable[Sequence[str]], holding: str | None = None) -> BlocksState:
        """A state with its stacks in canonical order (empty stacks dropped)."""
        return cls(tuple(sorted(tuple(stack) for stack in stacks if stack)), holding)

    @property
    def blocks(self) -> frozenset[str]:
        held = {self.holding} if self.holding else set()
        return frozenset(block for stack in self.stacks for block in stack) | held

    def below(self, block: str) -> str | None:
        """The block under ``block``; ``"table"`` for a bottom block; None when it is held."""
        for stack in self.stacks:
            if block in stack:
                index = stack.index(block)
                return stack[index - 1] if index else "table"
        return None

    def is_clear(self, block: str) -> bool:
        """Nothing is on ``block`` and it is not held."""
        return any(stack[-1] == block for stack in self.stacks)

    def on_facts(self) -> frozenset[tuple[str, str]]:
        """Every (block, block under it) pair."""
        return frozenset((upper, lower) for stack in self.stacks for lower, upper in zip(stack, stack[1:]))

    def describe(self) -> str:
        """The state in words: clear blocks, the hand, what stands on what."""
        facts = [f"the {block} block is clear" for block in sorted(s[-1] for s in self.stacks)]
        facts.append(f"the hand is holding the {self.holding} block" if self.holding else "the hand is empty")
        for stack in self.stacks:
            facts += [f"the {upper} block is on the {lower} block" for lower, upper in zip(stack, stack[1:])]
            facts.append(f"the {stack[0]} block is on the table")
        return ", ".join(facts)


def apply_action(state: BlocksState, action: Action) -> BlocksState:
    """The state after ``action``; :class:`IllegalActionError` names the precondition that fails."""
    for name in (action.block, action.other):
        if name is not None and name not in state.blocks:
            raise IllegalActionError(action, f"the {name} block exists", f"the blocks are {_names(state.blocks)}")
    if action.verb in ("pick up", "unstack"):
        if state.holding is not None:
            raise IllegalActionError(action, "the hand is empty", f"it holds the {state.holding} block")
        under = state.below(action.block)
        wanted = "table" if action.verb == "pick up" else action.other
        if under != wanted:
            where = "the table" if wanted == "table" else f"the {wanted} block"
            actual = "the table" if under == "table" else f"the {under} block"
            raise IllegalActionError(action, f"the {action.block} block is on {where}", f"it is on {actual}")
        if not state.is_clear(action.block):
            raise IllegalActionError(action, f"the {action.block} block is clear", "another block is on it")
        stacks = [stack[:-1] if stack[-1] == action.block else stack for stack in state.stacks]
        return BlocksState.of(stacks, action.block)
    if state.holding != action.block:
        held = f"the {state.holding} block" if state.holding else "nothing"
        raise IllegalActionError(action, f"the hand is holding the {action.block} block", f"it holds {held}")
    if action.verb == "put down":
        return BlocksState.of([*state.stacks, (action.block,)])
    other = str(action.other)
    if not state.is_clear(other):
        reason = "it is the block in the hand" if other == state.holding else "another block is on it"
        raise IllegalActionError(action, f"the {other} block is clear", reason)
    return BlocksState.of([(*stack, action.block) if stack[-1] == other else stack for stack in state.stacks])


def _names(blocks: Iterable[str]) -> str:
    return ", ".join(sorted(blocks))


def legal_actions(state: BlocksState) -> list[Action]:
    """Every action whose preconditions hold, in a fixed order."""
    if state.holding is not None:
        held = state.holding
        return [Action("put down", held)] + [Action("stack", held, s[-1]) for s in state.stacks]
    return [Action("pick up", s[0]) if len(s) == 1 else Action("unstack", s[-1], s[-2]) for s in state.stacks]


# ---------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class BlocksworldProblem:
    """An initial state and a goal: (block, block under it) pairs that must hold, hand empty."""

    initial: BlocksState
    goal: frozenset[tuple[str, str]]

    def is_goal(self, state: BlocksState) -> bool:
        return state.holding is None and self.goal <= state.on_facts()

    def describe_goal(self) -> str:
        return ", ".join(f"the {upper} block is on the {lower} block" for upper, lower in sorted(self.goal))

    def question(self) -> str:
        """The problem as the task's question text (what :func:`parse_problem` reads back)."""
        return (f"Blocks: {_names(self.initial.blocks)}.\n"
                f"Initial state: {self.initial.describe()}.\n"
                f"Goal: {self.describe_goal()}.")


@dataclass(frozen=True)
class PlanCheck:
    """What :func:`simulate` found: the final state, whether it is the goal, the first error."""

    state: BlocksState
    reached_goal: bool
    error: IllegalActionError | None = None

    @property
    def valid(self) -> bool:
        """Every action legal and the goal reached."""
        return self.error is None and self.reached_goal


def simulate(problem: BlocksworldProblem, plan: Sequence[Action]) -> PlanCheck:
    """Run ``plan`` from the initial state, stopping at the first illegal action."""
    state = problem.initial
    for step, action in enumerate(plan, 1):
        try:
            state = apply_action(state, action)
        except IllegalActionError as error:
            located = IllegalActionError(error.action, error.precondition, error.reason, step)
            return PlanCheck(state, False, located)
    return PlanCheck(state, problem.is_goal(state))


def optimal_plan(problem: BlocksworldProblem) -> list[Action]:
    """A shortest plan, by breadth-first search over states (every problem is solvable)."""
    parents: dict[BlocksState, tuple[BlocksState, Action] | None] = {problem.initial: None}
    frontier = deque([problem.initial])
    while frontier:
        state = frontier.popleft()
        if problem.is_goal(state):
            return _path(parents, state)
        for action in legal_actions(state):
            successor = apply_action(state, action)
            if successor not in parents:
                parents[successor] = (state, action)
                frontier.append(successor)
    raise ValueError(f"no plan reaches the goal: {problem.describe_goal()}")  # unreachable for a valid goal


def _path(parents: dict[BlocksState, tuple[BlocksState, Action] | None], state: BlocksState) -> list[Action]:
    plan: list[Action] = []
    link = parents[state]
    while link is not None:
        state, action = link
        plan.append(action)
        link = parents[state]
    return plan[::-1]


def _random_stacks(rng: random.Random, blocks: Sequence[str]) -> list[tuple[str, ...]]:
    """``blocks`` shuffled and cut into stacks at random points."""
    order = list(blocks)
    rng.shuffle(order)
    stacks, current = [], [order[0]]
    for block in order[1:]:
        if rng.random() < 0.5:
            stacks.append(tuple(current))
            current = []
        current.append(block)
    return [*stacks, tuple(current)]


def generate_problem(n_blocks: int = 4, seed: int = 0) -> BlocksworldProblem:
    """A random problem on ``n_blocks`` blocks: initial and goal arrangements drawn from ``seed``.

    The goal is every on-relation of the goal arrangement (redrawn until it has one that
    does not already hold), so the optimal plan has at least two actions.
    """
    if not 2 <= n_blocks <= MAX_BLOCKS:
        raise ValueError(f"n_blocks must be between 2 and {MAX_BLOCKS}, got {n_blocks}")
    rng = random.Random(f"blocksworld-{n_blocks}-{seed}")
    blocks = BLOCK_NAMES[:n_blocks]
    initial = BlocksState.of(_random_stacks(rng, blocks))
    while True:
        goal = BlocksState.of(_random_stacks(rng, blocks)).on_facts()
        if goal and not goal <= initial.on_facts():
            return BlocksworldProblem(initial, goal)


def generate_problems(count: int, n_blocks: int = 4, seed: int = 0) -> list[BlocksworldProblem]:
    """``count`` problems, the i-th drawn from seed ``seed + i``."""
    return [generate_problem(n_blocks, seed + index) for index in range(count)]


def parse_problem(question: str) -> BlocksworldProblem:
    """Read back a :meth:`BlocksworldProblem.question` text; ValueError names what is missing."""
    sections = {}
    for line in question.splitlines():
        name, _, text = line.partition(":")
        sections[name.strip().lower()] = text
    if "initial state" not in sections or "goal" not in sections:
        raise ValueError("a Blocksworld question needs an 'Initial state:' line and a 'Goal:' line")
    below: dict[str, str] = {}
    for upper, lower, table in _FACT_ON.findall(sections["initial state"]):
        below[upper.lower()] = "table" if table else lower.lower()
    holding = re.search(r"holding the (\w+) block", sections["initial state"])
    goal = frozenset((upper.lower(), lower.lower()) for upper, lower, table in _FACT_ON.findall(sections["goal"])
                     if not table)
    return BlocksworldProblem(_stacks_from(below, holding.group(1).lower() if holding else None), goal)


def _stacks_from(below: dict[str, str], holding: str | None) -> BlocksState:
    above = {lower: upper for upper, lower in below.items() if lower != "table"}
    stacks = []
    for bottom in (block for block, lower in below.items() if lower == "table"):
        stack = [bottom]
        while stack[-1] in above:
            stack.append(above[stack[-1]])
        stacks.append(stack)
    if sum(len(stack) for stack in stacks) != len(below):
        raise ValueError("the initial state's blocks do not form stacks on the table")
    return BlocksState.of(stacks, holding)


def parse_plan(text: str) -> list[Action] | None:
    """Actions, one per non-empty line; None when a line names no action."""
    plan = []
    for line in text.splitlines():
        if not clean_line(line):
            continue
        action = parse_action(line)
        if action is None:
            return None
        plan.append(action)
    return plan


# ---------------------------------------------------------------------------------- task


class BlocksworldTask(Task):
    """Blocksworld planning: the question is a problem text (:meth:`BlocksworldProblem.question`).

    A state is a partial plan, a thought one action (written canonically, e.g. ``unstack
    the red block from the blue block``); prompts see the simulated current state as
    ``{state}`` (or the error of an illegal step), the legal moves there as ``{moves}``
    (``- move`` lines) and the goal as ``{goal}``. Listing the legal moves lets even a
    small model answer with one. The answer is the plan so far followed by the actions
    of the answer reply, one per line; :meth:`check` runs it.
    """

    name = "blocksworld"
    default_depth = 4
    extra_variables = frozenset({"state", "moves", "goal"})
    stops = {**Task.stops, "propose": ("\n\n",), "answer": ("\n\n",)}

    def variables(self, question: str, steps: Sequence[str]) -> dict[str, object]:
        """Adds ``{state}`` (after the steps), ``{moves}`` and ``{goal}``."""
        return {**super().variables(question, steps), **self._situation(question, steps, 0)}

    def sample_prompt(self, question: str, steps: Sequence[str], index: int, k: int) -> str:
        """The sample prompt of option ``index``, its legal moves rotated by ``index - 1``."""
        situation = self._situation(question, steps, index - 1)
        variables = {**super().variables(question, steps), **situation, "index": index, "k": k}
        return fill(self.prompts["sample"], variables)

    def _situation(self, question: str, steps: Sequence[str], rotation: int) -> dict[str, str]:
        """``state``, ``moves`` (rotated by ``rotation``) and ``goal`` after ``steps``."""
        problem = parse_problem(question)
        plan = [parse_action(step) for step in steps]
        if any(action is None for action in plan):
            return {"state": "unknown: a step of the plan is not an action", "moves": "- none\n",
                    "goal": problem.describe_goal()}
        checked = simulate(problem, [action for action in plan if action is not None])
        if checked.error:
            return {"state": f"illegal plan, {checked.error}", "moves": "- none\n", "goal": problem.describe_goal()}
        moves = [str(action) for action in legal_actions(checked.state)]
        shift = rotation % len(moves)
        listed = "".join(f"- {move}\n" for move in [*moves[shift:], *moves[:shift]])
        return {"state": checked.state.describe(), "moves": listed, "goal": problem.describe_goal()}

    def parse_thoughts(self, text: str, k: int) -> list[str]:
        """The actions named on the reply's lines, canonically written, at most ``k``."""
        actions = [parse_action(line) for line in text.splitlines()]
        return dedupe([str(action) for action in actions if action is not None])[:k]

    def parse_sample(self, text: str) -> str | None:
        """The first action the reply names, canonically written."""
        for line in text.splitlines():
            action = parse_action(line)
            if action is not None:
                return str(action)
        return None

    def build_answer(self, completion: str, question: str, steps: Sequence[str]) -> str:
        """The plan: the steps, then the actions on the reply's lines (until a line names none)."""
        plan = list(steps)
        for line in completion.splitlines():
            if not clean_line(line):
                continue
            action = parse_action(line)
            if action is None:
                break
            plan.append(str(action))
        return "\n".join(plan)

    def check(self, question: str, answer: str, ground_truth: object = None) -> bool | None:
        """True when every line of ``answer`` is a legal action and the plan reaches the goal."""
        plan = parse_plan(answer)
        return plan is not None and simulate(parse_problem(question), plan).valid
