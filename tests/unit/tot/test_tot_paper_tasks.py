"""The paper's other two tasks: Blocksworld (generator, simulator, check) and Creative Writing
(inputs, check), each run as a whole tree on scripted fake LLMs and on a tiny random SeedLLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from langchain_seed.tot import TreeOfThoughts, get_task
from langchain_seed.tot.tasks import (
    Action,
    BlocksState,
    BlocksworldProblem,
    IllegalActionError,
    apply_action,
    generate_problem,
    generate_problems,
    optimal_plan,
    parse_action,
    parse_problem,
    simulate,
    writing_inputs,
    writing_question,
)
from langchain_seed.tot.tasks.blocksworld import legal_actions

from tot_fakes import ScriptedLLM

HELDOUT = Path(__file__).resolve().parents[3] / "langchain_seed" / "bench" / "data" / "gsm8k_heldout.jsonl"


# ------------------------------------------------------------------ Blocksworld: world


@pytest.mark.parametrize("n_blocks", [2, 3, 4, 5])
def test_generator_is_reproducible_per_seed_and_its_problems_are_solvable(n_blocks):
    problems = generate_problems(8, n_blocks, seed=3)
    assert problems == generate_problems(8, n_blocks, seed=3)
    assert problems != generate_problems(8, n_blocks, seed=4)
    for problem in problems:
        assert problem.initial.blocks == frozenset(problem.initial.blocks) and len(problem.initial.blocks) == n_blocks
        assert problem.goal and not problem.is_goal(problem.initial)
        plan = optimal_plan(problem)
        assert simulate(problem, plan).valid and len(plan) >= 2
        assert parse_problem(problem.question()) == problem


def test_optimal_plan_is_shortest():
    # the 4-block problem of seed 1 needs 8 moves; no plan of fewer legal moves reaches the goal
    problem = generate_problem(4, seed=1)
    plan = optimal_plan(problem)
    frontier = {problem.initial}
    for _ in range(len(plan) - 1):
        frontier = {apply_action(state, action) for state in frontier for action in legal_actions(state)}
        assert not any(problem.is_goal(state) for state in frontier)
    assert len(plan) == 8


TOWER = BlocksState.of([("red", "blue")])  # blue on red, red on the table
PROBLEM = BlocksworldProblem(BlocksState.of([("red", "blue"), ("green",)]), frozenset({("red", "green")}))


@pytest.mark.parametrize("state, action, precondition", [
    (TOWER, Action("pick up", "blue"), "the blue block is on the table"),
    (TOWER, Action("pick up", "red"), "the red block is clear"),
    (BlocksState.of([("red",), ("blue",)]), Action("unstack", "blue", "red"), "the blue block is on the red block"),
    (BlocksState.of([("blue", "red")]), Action("pick up", "blue"), "the blue block is clear"),
    (BlocksState.of([("blue",)], holding="red"), Action("pick up", "blue"), "the hand is empty"),
    (TOWER, Action("put down", "blue"), "the hand is holding the blue block"),
    (BlocksState.of([("red",)], holding="blue"), Action("stack", "red", "blue"), "the hand is holding the red block"),
    (BlocksState.of([("red", "green")], holding="blue"), Action("stack", "blue", "red"), "the red block is clear"),
    (BlocksState.of([("red",)], holding="blue"), Action("stack", "blue", "blue"), "the blue block is clear"),
    (TOWER, Action("pick up", "pink"), "the pink block exists"),
])
def test_simulator_names_the_violated_precondition(state, action, precondition):
    with pytest.raises(IllegalActionError) as error:
        apply_action(state, action)
    assert error.value.precondition == precondition
    assert f"precondition '{precondition}' does not hold" in str(error.value) and str(action) in str(error.value)


def test_simulator_stops_at_the_first_illegal_step():
    plan = [Action("unstack", "blue", "red"), Action("pick up", "green")]
    checked = simulate(PROBLEM, plan)
    assert not checked.valid and checked.error is not None and checked.error.step == 2
    assert checked.error.precondition == "the hand is empty"
    assert checked.state == BlocksState.of([("red",), ("green",)], holding="blue")


def test_the_four_actions_move_blocks():
    state = apply_action(PROBLEM.initial, Action("unstack", "blue", "red"))
    state = apply_action(state, Action("put down", "blue"))
    state = apply_action(state, Action("pick up", "red"))
    assert state == BlocksState.of([("blue",), ("green",)], holding="red")
    state = apply_action(state, Action("stack", "red", "green"))
    assert state.on_facts() == {("red", "green")} and PROBLEM.is_goal(state)


@pytest.mark.parametrize("text, expected", [
    ("1. Unstack the red block from the blue block.", Action("unstack", "red", "blue")),
    ("Next: pickup the Yellow block", Action("pick up", "yellow")),
    ("put-down red", Action("put down", "red")),
    ("stack the red block on top of the blue block", Action("stack", "red", "blue")),
    ("stack red onto blue", Action("stack", "red", "blue")),
    ("stack the red block", None),
    ("move everything", None),
])
def test_parse_action(text, expected):
    assert parse_action(text) == expected


# ------------------------------------------------------------------- Blocksworld: task


def test_check_accepts_an_optimal_plan_and_rejects_wrong_ones():
    task = get_task("blocksworld")
    problem = generate_problem(4, seed=1)
    question = problem.question()
    plan = [str(action) for action in optimal_plan(problem)]
    assert task.check(question, "\n".join(plan)) is True
    assert task.check(question, "\n".join(plan[:-1])) is False  # legal, goal not reached
    assert task.check(question, "\n".join([plan[1], *plan])) is False  # illegal first step
    assert task.check(question, "\n".join([*plan, "and then we are done"])) is False  # not an action


def test_prompts_show_the_simulated_state_the_legal_moves_and_the_goal():
    task = get_task("blocksworld")
    problem = generate_problem(4, seed=1)
    first = str(optimal_plan(problem)[0])
    prompt = task.propose_prompt(problem.question(), [first], 3)
    state = apply_action(problem.initial, parse_action(first))
    moves = "".join(f"- {move}\n" for move in legal_actions(state))
    assert f"Step 1: {first}\nNow: {state.describe()}.\nLegal moves now:\n{moves}List 3 good" in prompt
    illegal = task.value_prompt(problem.question(), ["put down the red block"])
    assert "precondition 'the hand is holding the red block' does not hold" in illegal
    assert f"Goal: {problem.describe_goal()}." in illegal and "Legal moves now:\n- none\n" in illegal


def test_sample_options_list_the_legal_moves_rotated():
    task = get_task("blocksworld")
    problem = generate_problem(4, seed=2)  # four blocks on the table: four legal moves
    moves = [str(move) for move in legal_actions(problem.initial)]
    listed = [re.findall(r"^- (.*)$", task.sample_prompt(problem.question(), [], i, 3), re.M) for i in (1, 2, 3)]
    assert listed == [moves, [*moves[1:], moves[0]], [*moves[2:], *moves[:2]]]


def test_thoughts_are_canonical_actions():
    task = get_task("blocksworld")
    reply = "1. Unstack the red block from the blue block.\n2. think about it\n3. unstack red from blue\n4) pickup green"
    assert task.parse_thoughts(reply, 3) == ["unstack the red block from the blue block", "pick up the green block"]
    assert task.parse_sample("Hmm.\nput down the red block, then") == "put down the red block"
    assert task.build_answer("stack red on blue\nDone!\nput down green", "q", ["pick up the red block"]) == (
        "pick up the red block\nstack the red block on the blue block")


def blocksworld_reply(prompt: str, sample: int = 0) -> str:
    """A scripted planner: option 1 is the next optimal move, the others other legal moves;
    values 10 on the optimal path, 2 off it; the answer finishes the optimal plan."""
    problem = parse_problem(prompt[prompt.index("Blocks:"):prompt.index("Plan so far:")].strip())
    steps = [parse_action(step) for step in re.findall(r"^Step \d+: (.*)$", prompt, re.M)]
    optimal = optimal_plan(problem)
    on_path = steps == optimal[:len(steps)]
    if prompt.endswith("the plan so far scores"):
        return " 10" if on_path else " 2"
    if "Remaining moves" in prompt:
        return "\n".join(str(action) for action in optimal[len(steps):]) + "\n\nThat is all."
    state = simulate(problem, steps).state
    index = int(re.search(r"option (\d+) of", prompt).group(1))
    moves = [optimal[len(steps)]] + [a for a in legal_actions(state) if a != optimal[len(steps)]]
    return f"{moves[(index - 1) % len(moves)]}\nsomething else"


@pytest.mark.parametrize("depth", [1, 3])
def test_blocksworld_tree_on_a_scripted_llm(depth):
    problem = generate_problem(4, seed=3)  # 8 moves; every state on the way has two legal moves or more
    llm = ScriptedLLM(reply=blocksworld_reply)
    tot = TreeOfThoughts(llm=llm, task="blocksworld", breadth=2, depth=depth, generator="sample")
    result = tot.invoke({"question": problem.question()}, return_tree=True)
    assert result.answer == "\n".join(str(action) for action in optimal_plan(problem))
    assert result.is_correct is True
    # one batched call per level for the moves, one for their values, one for the answer
    assert [len(call) for call in llm.calls] == [2, 2] + [4, 4] * (depth - 1) + [1]
    assert result.stats.batches_by_role == {"sample": depth, "value": depth, "answer": 1}


# ------------------------------------------------------------------------ writing


def test_writing_inputs_are_reproducible_numbered_sentences():
    texts = [json.loads(line)["question"] for line in HELDOUT.read_text().splitlines()]
    inputs = writing_inputs(texts, 3, seed=0)
    assert inputs == writing_inputs(texts, 3, seed=0) and inputs != writing_inputs(texts, 3, seed=1)
    for question in inputs:
        lines = question.splitlines()
        assert [line[:3] for line in lines] == ["1. ", "2. ", "3. ", "4. "]
        assert all(line.endswith(".") and line[3:] in " ".join(texts) for line in lines)
    with pytest.raises(ValueError, match="usable sentences"):
        writing_inputs(["Too short."], 1)


SENTENCES = ["It was a cold morning.", "The dog barked at the mailman.", "Nobody knew why.", "They left at noon."]


def valid_passage(sentences: list[str]) -> str:
    return "\n\n".join(f"Paragraph {i} begins here. {s}" for i, s in enumerate(sentences, 1))


def test_writing_check_accepts_a_valid_passage_and_rejects_a_wrong_ending():
    task = get_task("writing")
    question = writing_question(SENTENCES)
    assert task.check(question, valid_passage(SENTENCES)) is True
    assert task.check(question, task.build_answer("Passage:\n" + valid_passage(SENTENCES), question, [])) is True
    wrong = valid_passage([*SENTENCES[:3], "They stayed until night."])
    assert task.check(question, wrong) is False
    swapped = valid_passage([SENTENCES[1], SENTENCES[0], *SENTENCES[2:]])
    assert task.check(question, swapped) is False
    assert task.check(question, valid_passage(SENTENCES[:3])) is False
    # whole words: "She left at noon." does not end with "he left at noon."
    assert task.check(writing_question(["He left at noon."]), "She left at noon.") is False


def writing_reply(prompt: str, sample: int = 0) -> str:
    """Plans by option, votes for the plan of option 2 wherever it is listed, and a passage
    meeting the constraint."""
    option = re.search(r"Plan \(option (\d+)", prompt)
    if option:
        return f"A story told in four parts, version {option.group(1)}.\n"
    if prompt.endswith("Best choice: "):
        return re.search(r"Choice (\d+):\nStep 1: [^\n]*version 2\.", prompt).group(1)
    sentences = re.findall(r"^\d\. (.*)$", prompt, re.M)
    return valid_passage(sentences)


def test_writing_tree_on_a_scripted_llm_plans_votes_and_writes():
    llm = ScriptedLLM(reply=writing_reply)
    tot = TreeOfThoughts(llm=llm, task="writing", breadth=3, generator="sample", evaluator="vote", n_evaluate=3)
    result = tot.invoke(writing_question(SENTENCES), return_tree=True)
    assert result.is_correct is True and result.check(valid_passage(SENTENCES[::-1])) is False
    assert [len(call) for call in llm.calls] == [3, 3, 1]  # 3 plans, 3 votes, 1 passage
    assert "Step 1: A story told in four parts, version 2." in llm.calls[-1][0]


# --------------------------------------------------- whole trees on a tiny random SeedLLM


@pytest.mark.parametrize("task, question, evaluator", [
    ("blocksworld", generate_problem(3, seed=0).question(), "value"),
    ("writing", writing_question(SENTENCES), "vote"),
])
def test_whole_tree_on_a_tiny_seed_llm(tiny_llm, task, question, evaluator):
    tot = TreeOfThoughts(llm=tiny_llm, task=task, breadth=2, depth=2, generator="sample", evaluator=evaluator,
                         llm_kwargs={"max_tokens": 8})
    result = tot.invoke(question, return_tree=True)
    assert isinstance(result.answer, str) and result.is_correct in (True, False)
    grown = [record for record in result.trace if record["children"]]
    batches = result.stats.batches_by_role
    # every level that asked the LLM asked it once for its thoughts (and once for their scores)
    assert batches["sample"] == len(result.trace) and batches["answer"] == 1
    assert batches.get(evaluator, 0) == sum(len(r["children"]) > (evaluator == "vote") for r in grown)
