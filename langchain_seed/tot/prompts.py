"""Prompt templates for Tree-of-Thoughts, one per task and role.

Roles:

- ``propose``: one call that lists ``{k}`` different next steps, one per line.
- ``sample``: one next step; ``{index}`` of ``{k}`` makes k greedy calls k different
  prompts (at temperature 0, k copies of one prompt would be k copies of one text).
- ``value``: score one partial state (0-10, or sure/likely/impossible for game24).
- ``vote``: the candidate states numbered in ``{choices}``; the reply names the best.
- ``answer``: the final answer from the best state.

Variables every role may use: ``{question}`` and ``{steps}`` (the state so far, each
step on its own line as ``Step i: ...``, empty at the root); ``propose`` and ``sample``
add ``{k}``, ``sample`` adds ``{index}``, ``vote`` replaces ``{steps}`` with
``{choices}`` and ``{n}`` (the number of choices); game24 adds ``{left}`` (the
numbers still to combine); blocksworld adds ``{state}`` (the arrangement the plan so far
leads to, or why it is illegal), ``{moves}`` (the legal moves there, one per line; the
``sample`` prompt of option ``i`` lists them rotated by ``i - 1``, so that greedy
options differ) and ``{goal}``.

The GSM8K shapes are fixed: a draft model is distilled on them. Templates are built
fresh by :func:`default_prompts`, so a caller can never mutate a shared one.
"""

from __future__ import annotations

from collections.abc import Mapping

from langchain_core.prompts import PromptTemplate

ROLES = ("propose", "sample", "value", "vote", "answer")

ROLE_VARIABLES: Mapping[str, frozenset[str]] = {
    "propose": frozenset({"question", "steps", "k"}),
    "sample": frozenset({"question", "steps", "index", "k"}),
    "value": frozenset({"question", "steps"}),
    "vote": frozenset({"question", "choices", "n"}),
    "answer": frozenset({"question", "steps"}),
}

_VOTE_TAIL = "Which choice is most promising? Answer with its number.\nBest choice: "

_GSM8K = {
    "propose": (
        "Solve the math problem step by step.\nQuestion: {question}\n{steps}"
        "Propose {k} different next steps. Write each on its own line as a "
        "sub-question followed by its answer.\n"
    ),
    "sample": (
        "Solve the math problem step by step.\nQuestion: {question}\n{steps}"
        "Next step (option {index} of {k}): "
    ),
    "value": (
        "Question: {question}\n{steps}How likely is this partial solution to lead to "
        "the correct answer? Give a score from 0 to 10.\nScore: "
    ),
    "vote": "Question: {question}\n{choices}" + _VOTE_TAIL,
    "answer": "Question: {question}\n{steps}Therefore, the final answer (a number) is ",
}

_GENERIC = {
    "propose": (
        "Answer the question step by step.\nQuestion: {question}\n{steps}"
        "Propose {k} different next steps. Write each on its own line.\n"
    ),
    "sample": (
        "Answer the question step by step.\nQuestion: {question}\n{steps}"
        "Next step (option {index} of {k}): "
    ),
    "value": (
        "Question: {question}\n{steps}How likely is this partial reasoning to lead to "
        "a correct answer? Give a score from 0 to 10.\nScore: "
    ),
    "vote": "Question: {question}\n{choices}" + _VOTE_TAIL,
    "answer": "Question: {question}\n{steps}Therefore, the final answer is ",
}

_GAME24_GOAL = (
    "Use + - * / to reach 24 from the numbers {question}, each number exactly once.\n"
)

_GAME24 = {
    "propose": (
        "Combine two of the numbers with + - * / into a new number. Propose {k} "
        "different next steps, one per line, in the form: "
        "a op b = c (left: remaining numbers)\n"
        "Numbers: 3 5 7 9\n"
        "3 + 5 = 8 (left: 7 8 9)\n"
        "9 - 7 = 2 (left: 2 3 5)\n"
        "5 * 3 = 15 (left: 7 9 15)\n"
        "Numbers: {left}\n"
    ),
    "sample": (
        _GAME24_GOAL + "{steps}Next step (option {index} of {k}), in the form "
        "a op b = c (left: remaining numbers): "
    ),
    "value": (
        "Can the numbers reach 24 with + - * /, each used exactly once? "
        "Answer sure, likely or impossible.\n"
        "Numbers: 4 6\nJudgement: sure\n"
        "Numbers: 1 1 2\nJudgement: impossible\n"
        "Numbers: 2 5 9\nJudgement: likely\n"
        "Numbers: {left}\nJudgement: "
    ),
    "vote": _GAME24_GOAL + "{choices}" + _VOTE_TAIL,
    "answer": (
        _GAME24_GOAL + "{steps}Write the whole calculation as one expression, "
        "e.g. (1 + 3) * (2 + 4) = 24.\nAnswer: "
    ),
}

_WRITING_GOAL = (
    "Write a coherent passage of 4 short paragraphs. Paragraph 1 must end with sentence 1 "
    "below, paragraph 2 with sentence 2, and so on, word for word:\n{question}\n"
)

_WRITING = {
    "propose": (
        _WRITING_GOAL + "{steps}Propose {k} different plans for the passage, each on its "
        "own line: in one sentence, what the 4 paragraphs tell.\n"
    ),
    "sample": _WRITING_GOAL + "{steps}Plan (option {index} of {k}), in one sentence: ",
    "value": (
        _WRITING_GOAL + "{steps}How coherent and promising is this plan? "
        "Give a score from 0 to 10.\nScore: "
    ),
    "vote": _WRITING_GOAL + "Plans:\n{choices}" + _VOTE_TAIL,
    "answer": (
        _WRITING_GOAL + "{steps}Write the passage following the plan, its 4 paragraphs "
        "separated by blank lines.\nPassage:\n"
    ),
}

_BLOCKS_RULES = (
    "Toy blocks stand in stacks on a table, and one hand can hold one block. Four moves "
    "exist: pick up a clear block from the table, put down the held block on the table, "
    "stack the held block on a clear block, unstack a clear block from the block under it. "
    "A block is clear when nothing is on it and it is not in the hand.\n"
)
_BLOCKS_STATE = "{question}\nPlan so far:\n{steps}Now: {state}.\nLegal moves now:\n{moves}"

_BLOCKSWORLD = {
    "propose": _BLOCKS_RULES + _BLOCKS_STATE + "List {k} good next moves, one per line:\n-",
    "sample": _BLOCKS_RULES + _BLOCKS_STATE + "Next move (option {index} of {k}):\n-",
    "value": (
        _BLOCKS_RULES + _BLOCKS_STATE + "Goal: {goal}.\nOn a scale from 0 (illegal or "
        "stuck) to 10 (goal reached), the plan so far scores"
    ),
    "vote": _BLOCKS_RULES + "{question}\n{choices}" + _VOTE_TAIL,
    "answer": _BLOCKS_RULES + _BLOCKS_STATE + "Remaining moves to reach the goal, one per line:\n-",
}

_TEMPLATES: Mapping[str, Mapping[str, str]] = {
    "gsm8k": _GSM8K,
    "generic": _GENERIC,
    "game24": _GAME24,
    "writing": _WRITING,
    "blocksworld": _BLOCKSWORLD,
}


def default_prompts(task_name: str) -> dict[str, PromptTemplate]:
    """Return fresh ``PromptTemplate``s for every role of a built-in task."""
    if task_name not in _TEMPLATES:
        valid = ", ".join(sorted(_TEMPLATES))
        raise ValueError(f"No built-in prompts for task {task_name!r}; valid: {valid}")
    return {
        role: PromptTemplate.from_template(text)
        for role, text in _TEMPLATES[task_name].items()
    }


def as_template(role: str, prompt: PromptTemplate | str) -> PromptTemplate:
    """Accept a ``PromptTemplate`` or an f-string template text for ``role``."""
    if isinstance(prompt, PromptTemplate):
        return prompt
    if isinstance(prompt, str):
        return PromptTemplate.from_template(prompt)
    raise ValueError(
        f"prompts[{role!r}] must be a PromptTemplate or a template string, "
        f"got {type(prompt).__name__}"
    )


def check_prompt_overrides(
    overrides: Mapping[str, PromptTemplate | str],
    extra_variables: frozenset[str] = frozenset(),
) -> dict[str, PromptTemplate]:
    """Validate user prompts: known roles, and only variables the role provides."""
    checked = {}
    for role, prompt in overrides.items():
        if role not in ROLE_VARIABLES:
            raise ValueError(
                f"Unknown prompt role {role!r}; valid roles: {', '.join(ROLES)}"
            )
        template = as_template(role, prompt)
        allowed = ROLE_VARIABLES[role] | extra_variables
        unknown = set(template.input_variables) - allowed
        if unknown:
            raise ValueError(
                f"prompts[{role!r}] uses unknown variable(s) {sorted(unknown)}; "
                f"available for this role: {sorted(allowed)}"
            )
        checked[role] = template
    return checked


def fill(template: PromptTemplate, variables: Mapping[str, object]) -> str:
    """Format ``template`` with the variables it declares (extra ones are ignored)."""
    return template.format(**{name: variables[name] for name in template.input_variables})
