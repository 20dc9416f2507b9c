"""The broad prompt mix: what a LangChain app sends the target, in families, with a
held-out split per family.

Families (`FAMILIES`): the Tree-of-Thoughts prompts of every built-in task (``tot-gsm8k``,
``tot-game24``, ``tot-writing``, ``tot-generic``, and ``tot-blocksworld`` once that task
is in `tot.tasks`), plain questions (``question``), chain-of-thought questions (``cot``),
chat conversations rendered through the tokenizer's chat template as `ChatSeed` sends
them (``chat``), decomposition requests (``subquestion``), evaluation requests
(``evaluation``), creative requests (``creative``) and the target's own questions
(``self-instruct``: `self_instruct_requests` asks the target for questions, and
`self_instruct_prompts` turns its answer into prompts, answered in turn).

Sources: GSM8K questions and reference solutions (a jsonl of ``question``/``answer``
objects), Game of 24 puzzles drawn here and checked solvable, and the topics and
templates below. Nothing comes from the Hub.

Split: every prompt belongs to a *unit* (a GSM8K question, a topic, a puzzle); a unit is
held out or not, so no held-out unit is ever trained on. GSM8K questions ``0..heldout-1``
are held out (the shipped draft never saw them); topics and puzzles by a hash of their name.
Every draw is deterministic: one RNG per (seed, family, split, index).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from langchain_seed.tot.tasks import TASKS, Game24Task, GenericTask, GSM8KTask, Task, WritingTask

SPLITS = ("train", "heldout")
HELDOUT_PERMILLE = 200
"""Topics and puzzles whose hash falls under this (of 1000) are held out."""

Messages = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MixPrompt:
    """One prompt of the mix: a raw text, or chat messages (role, content) rendered through
    the tokenizer's chat template. ``unit`` is the source it was drawn from."""

    family: str
    unit: str
    split: str
    text: str = ""
    messages: Messages = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """A content hash: the same prompt always has the same key."""
        content = json.dumps([self.family, self.text, [list(m) for m in self.messages]])
        return hashlib.sha256(content.encode()).hexdigest()[:24]


def render(prompt: MixPrompt, tokenizer: Any) -> str:
    """The prompt as the target reads it: the text, or the messages through the chat template
    (with the generation prompt, as `ChatSeed` sends them)."""
    if not prompt.messages:
        return prompt.text
    if getattr(tokenizer, "chat_template", None) is None:
        return "".join(f"{role}: {content}\n" for role, content in prompt.messages) + "assistant: "
    conversation = [{"role": role, "content": content} for role, content in prompt.messages]
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------ sources

TOPICS = (
    "photosynthesis", "the water cycle", "volcanoes", "the moon's phases", "honey bees", "rainbows",
    "the French Revolution", "ancient Egypt", "the printing press", "the Roman roads", "the Silk Road",
    "compound interest", "a household budget", "saving for retirement", "inflation", "credit cards",
    "learning a new language", "sleep and memory", "running a marathon", "a balanced diet", "meditation",
    "recursion in programming", "sorting algorithms", "how a web browser works", "password security",
    "version control", "unit testing", "databases and indexes", "machine translation", "spreadsheets",
    "growing tomatoes", "composting", "caring for a puppy", "bird migration", "coral reefs", "deserts",
    "the human heart", "vaccines", "the immune system", "bones and muscles", "how we see colours",
    "electric cars", "wind turbines", "solar panels", "batteries", "bridges", "skyscrapers", "airplanes",
    "chess openings", "playing the guitar", "writing a haiku", "painting with watercolours", "jazz",
    "public speaking", "job interviews", "time management", "working in a team", "giving feedback",
    "climate change", "recycling plastic", "city parks", "public transport", "libraries", "museums",
    "black holes", "Mars exploration", "the solar system", "telescopes", "gravity", "magnets",
    "the history of tea", "baking bread", "fermentation", "chocolate", "coffee", "spices",
    "a lighthouse keeper", "a lost key", "a dragon who fears fire", "a robot learning to paint",
    "a small town bakery", "a storm at sea", "an old map", "a talking cat", "a train at midnight",
)

GENERIC_QUESTIONS = (
    "What is {topic}, in two sentences?",
    "Why does {topic} matter to ordinary people?",
    "Explain {topic} to a ten-year-old.",
    "What are three common misconceptions about {topic}?",
    "How would you start learning about {topic}?",
    "What is the most surprising fact about {topic}?",
    "Give a short history of {topic}.",
    "What are the pros and cons of {topic}?",
    "Compare {topic} with {other}.",
    "What questions should I ask an expert on {topic}?",
    "Summarise the main ideas behind {topic}.",
    "How is {topic} related to {other}?",
)

CREATIVE_REQUESTS = (
    "Write the opening line of a story about {topic}.",
    "Write a short poem about {topic}.",
    "Write a haiku about {topic}.",
    "Continue the story: The morning it all began, {topic} was the last thing on my mind.",
    "Write a two-sentence story about {topic}.",
    "Describe {topic} as if you were seeing it for the first time.",
    "Write a short dialogue between two friends about {topic}.",
    "Give a story about {topic} a title and a first paragraph.",
)

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer concisely.",
    "You are a patient math tutor. Explain each step.",
    "You are a friendly assistant who writes clearly and briefly.",
    "You are an expert teacher. Think step by step before you answer.",
)

COT_TEMPLATES = (
    "{question}\nLet's think step by step.",
    "Question: {question}\nAnswer: Let's think step by step.",
    "Q: {question}\nA: Let's work this out step by step to be sure we have the right answer.",
    "Answer the following question. Think step by step, then give the final answer.\n\n"
    "Question: {question}\nReasoning:",
)

QUESTION_TEMPLATES = (
    "{question}",
    "Question: {question}\nAnswer:",
    "Q: {question}\nA:",
    "Answer the question.\n{question}\n",
)

SUBQUESTION_TEMPLATES = (
    "Break the following question into smaller sub-questions, one per line.\n\nQuestion: {question}\n"
    "Sub-questions:\n",
    "To answer the question below, what do we need to know first? List the sub-questions.\n"
    "Question: {question}\n",
    "Question: {question}\nLet's break down this problem: ",
    "Question: {question}\n{steps}Sub-question {n}: ",
    "Question: {question}\n{steps}Answer the next sub-question.\n",
)

EVALUATION_TEMPLATES = (
    "Question: {question}\nProposed answer: {answer}\nIs the proposed answer correct? Answer yes or no, "
    "then explain.\n",
    "Here is a question and a response.\nQuestion: {question}\nResponse: {answer}\n"
    "Rate the response from 1 to 10 for correctness and clarity.\nRating:",
    "You are grading an answer.\nQuestion: {question}\nStudent answer: {answer}\n"
    "Grade (correct / incorrect) and a one-sentence reason:",
    "Check this reasoning step by step and point out any mistake.\nQuestion: {question}\n"
    "Reasoning: {answer}\n",
)

SELF_INSTRUCT_REQUESTS = (
    "Write 5 different questions that a curious student might ask about {topic}. One question per line.",
    "List 5 tasks that someone might ask an assistant to do that involve {topic}. One task per line.",
    "Write 5 short math word problems about {topic}. One problem per line.",
    "Write 5 instructions for a writing assistant about {topic}, such as writing a poem or a summary. "
    "One instruction per line.",
)


def _hash_fraction(text: str) -> int:
    """A stable number in [0, 1000) for ``text``."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 1000


def topic_split(topic: str) -> str:
    """Whether a topic is held out (by its hash): every prompt about it follows."""
    return "heldout" if _hash_fraction(f"topic:{topic}") < HELDOUT_PERMILLE else "train"


def topics_of(split: str) -> tuple[str, ...]:
    return tuple(t for t in TOPICS if topic_split(t) == split)


# ----------------------------------------------------------------------------- GSM8K


def strip_calculator(text: str) -> str:
    """Remove GSM8K calculator annotations such as ``<<16-3-4=9>>``."""
    return re.sub(r"<<[^>]*>>", "", text)


def reference_steps(answer: str) -> list[str]:
    """The reference solution's reasoning lines (without the final ``#### n`` line)."""
    lines = [strip_calculator(line).strip() for line in answer.split("\n")]
    return [line for line in lines if line and not line.startswith("####")]


def final_answer(answer: str) -> str:
    return answer.split("####")[-1].strip() if "####" in answer else ""


class Gsm8kPool:
    """The GSM8K questions of one split: ``0..heldout-1`` held out, the rest for training."""

    def __init__(self, records: Sequence[Mapping[str, str]], split: str, heldout: int) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        heldout = min(heldout, len(records))
        self.indices = list(range(heldout)) if split == "heldout" else list(range(heldout, len(records)))
        self.records = records

    def __bool__(self) -> bool:
        return bool(self.indices)

    def draw(self, rng: random.Random) -> tuple[str, Mapping[str, str]]:
        """(unit, record) of one question."""
        index = rng.choice(self.indices)
        return f"gsm8k:{index}", self.records[index]


def _perturb(step: str, rng: random.Random) -> str:
    """A step with one number changed (a wrong step for votes and evaluations)."""
    numbers = re.findall(r"\d+", step)
    if not numbers:
        return step + " So the answer is " + str(rng.randint(2, 99)) + "."
    wrong = rng.choice(numbers)
    return step.replace(wrong, str(int(wrong) + rng.randint(1, 9)), 1)


def tot_prompt(task: Task, role: str, question: str, steps: Sequence[str], rng: random.Random,
               alternatives: Sequence[Sequence[str]] = ()) -> str:
    """One ToT prompt of ``task`` for ``role`` at the state ``steps``, as `tot` builds it."""
    k = rng.choice((2, 3, 3, 3, 4, 5))
    if role == "propose":
        return task.propose_prompt(question, steps, k)
    if role == "sample":
        return task.sample_prompt(question, steps, rng.randint(1, k), k)
    if role == "value":
        return task.value_prompt(question, steps)
    if role == "vote":
        candidates = [list(steps), *alternatives]
        rng.shuffle(candidates)
        return task.vote_prompt(question, candidates)
    return task.answer_prompt(question, steps)


TOT_ROLES = ("propose", "sample", "value", "vote", "answer")
TOT_ROLE_WEIGHTS = (0.3, 0.3, 0.15, 0.1, 0.15)


def _role(rng: random.Random) -> str:
    return rng.choices(TOT_ROLES, weights=TOT_ROLE_WEIGHTS)[0]


def _gsm8k_state(record: Mapping[str, str], rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """A state after 0-2 reference steps, and two alternative states for votes."""
    steps = reference_steps(record.get("answer", ""))
    n = rng.randint(0, max(0, min(2, len(steps) - 1)))
    state = steps[:n]
    alternatives = [steps[: n + 1], [*steps[:n], _perturb(steps[n], rng)] if n < len(steps) else ["I am not sure."]]
    return state, alternatives


# ------------------------------------------------------------------------------ Game 24


def solve24(numbers: Sequence[Fraction]) -> list[str] | None:
    """One solution as ``a op b = c (left: ...)`` steps, or None when 24 cannot be reached."""
    if len(numbers) == 1:
        return [] if numbers[0] == 24 else None
    for i in range(len(numbers)):
        for j in range(len(numbers)):
            if i == j:
                continue
            a, b = numbers[i], numbers[j]
            rest = [n for m, n in enumerate(numbers) if m not in (i, j)]
            for op, value in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a / b if b else None)):
                if value is None or (op in "+*" and i > j):
                    continue
                left = sorted([*rest, value])
                found = solve24(left)
                if found is not None:
                    step = f"{_num(a)} {op} {_num(b)} = {_num(value)} (left: {' '.join(_num(n) for n in left)})"
                    return [step, *found]
    return None


def _num(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def game24_puzzle(rng: random.Random, split: str) -> tuple[str, list[str]]:
    """A solvable puzzle of the split (4 numbers in 1..13, held out by hash) and a solution."""
    while True:
        numbers = sorted(rng.randint(1, 13) for _ in range(4))
        question = " ".join(map(str, numbers))
        if (_hash_fraction(f"game24:{question}") < HELDOUT_PERMILLE) != (split == "heldout"):
            continue
        solution = solve24([Fraction(n) for n in numbers])
        if solution is not None:
            return question, solution


# --------------------------------------------------------------------------- families


def _sentences(text: str) -> list[str]:
    """The plain sentences of a GSM8K question (5 to 20 words, ending with a full stop)."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if p.endswith(".") and 5 <= len(p.split()) <= 20 and "$" not in p]


def _generic_question(rng: random.Random, topics: Sequence[str]) -> tuple[str, str]:
    topic, other = rng.choice(topics), rng.choice(topics)
    return f"topic:{topic}", rng.choice(GENERIC_QUESTIONS).format(topic=topic, other=other)


def _question(rng: random.Random, ctx: _Context) -> tuple[str, str, list[str]]:
    """(unit, question, reference steps): a GSM8K question or a generic one (then no steps)."""
    if ctx.gsm8k and rng.random() < 0.6:
        unit, record = ctx.gsm8k.draw(rng)
        return unit, record["question"], reference_steps(record.get("answer", ""))
    unit, question = _generic_question(rng, ctx.topics)
    return unit, question, []


@dataclass
class _Context:
    split: str
    gsm8k: Gsm8kPool
    topics: tuple[str, ...]


def _tot_gsm8k(rng: random.Random, ctx: _Context) -> MixPrompt:
    unit, record = ctx.gsm8k.draw(rng)
    state, alternatives = _gsm8k_state(record, rng)
    role = _role(rng)
    text = tot_prompt(GSM8KTask(), role, record["question"], state, rng, alternatives)
    return _maybe_chat(rng, "tot-gsm8k", unit, ctx.split, text, {"role": role})


def _tot_generic(rng: random.Random, ctx: _Context) -> MixPrompt:
    unit, question, steps = _question(rng, ctx)
    state = steps[: rng.randint(0, min(2, len(steps)))]
    alternatives = [steps[: len(state) + 1]] if len(steps) > len(state) else [["I am not sure."]]
    role = _role(rng)
    text = tot_prompt(GenericTask(), role, question, state, rng, alternatives)
    return _maybe_chat(rng, "tot-generic", unit, ctx.split, text, {"role": role})


def _tot_game24(rng: random.Random, ctx: _Context) -> MixPrompt:
    question, solution = game24_puzzle(rng, ctx.split)
    state = solution[: rng.randint(0, 2)]
    a, b, *rest = question.split()
    wrong = [f"{a} + {b} = {int(a) + int(b)} (left: {' '.join(sorted([*rest, str(int(a) + int(b))], key=int))})"]
    role = _role(rng)
    text = tot_prompt(Game24Task(), role, question, state, rng, [wrong])
    return MixPrompt("tot-game24", f"game24:{question}", ctx.split, text, meta={"role": role})


def _writing_question(rng: random.Random, ctx: _Context) -> tuple[str, str]:
    """4 sentences from 4 questions of the split's GSM8K pool (else generated ones)."""
    sentences: list[str] = []
    units: list[str] = []
    for _ in range(40):
        if len(sentences) == 4:
            break
        if ctx.gsm8k:
            unit, record = ctx.gsm8k.draw(rng)
            found = _sentences(record["question"])
        else:
            topic = rng.choice(ctx.topics)
            unit, found = f"topic:{topic}", [f"Nobody expected {topic} to change everything."]
        if found and unit not in units:
            sentences.append(rng.choice(found))
            units.append(unit)
    return "+".join(units), " ".join(sentences)


def _tot_writing(rng: random.Random, ctx: _Context) -> MixPrompt:
    unit, question = _writing_question(rng, ctx)
    plans = [
        "Introduce the main character, build up the problem, show the turning point, end with the lesson.",
        "Each paragraph is one scene in the same small town, moving from morning to night.",
        "Tell the passage as a letter from a grandmother to her grandchild.",
    ]
    state = [rng.choice(plans)] if rng.random() < 0.5 else []
    role = _role(rng)
    text = tot_prompt(WritingTask(), role, question, state, rng, [[p] for p in plans[:2]])
    return _maybe_chat(rng, "tot-writing", unit, ctx.split, text, {"role": role})


def _blocksworld_family() -> Callable[[random.Random, _Context], MixPrompt] | None:
    """The Blocksworld family once `tot.tasks` has that task (its seeded problem generator,
    question text and optimal plan); None before."""
    if "blocksworld" not in TASKS:
        return None
    try:
        module = importlib.import_module("langchain_seed.tot.tasks.blocksworld")
    except ImportError:
        return None
    generate, solve = getattr(module, "generate_problem", None), getattr(module, "optimal_plan", None)
    if generate is None or solve is None:
        return None
    task = TASKS["blocksworld"]()

    def family(rng: random.Random, ctx: _Context) -> MixPrompt:
        while True:  # problems split by a hash of their text, like puzzles
            problem = generate(rng.randint(3, 5), rng.randint(0, 10**9))
            question = problem.question()
            if (_hash_fraction(f"blocksworld:{question}") < HELDOUT_PERMILLE) == (ctx.split == "heldout"):
                break
        plan = [str(action) for action in solve(problem)]
        state = plan[: rng.randint(0, min(2, len(plan) - 1))]
        role = _role(rng)
        text = tot_prompt(task, role, question, state, rng, [plan[: len(state) + 1]])
        return _maybe_chat(rng, "tot-blocksworld", f"blocksworld:{question}", ctx.split, text, {"role": role})

    return family


def _maybe_chat(rng: random.Random, family: str, unit: str, split: str, text: str, meta: dict) -> MixPrompt:
    """A ToT prompt as a raw completion, or (1 in 4) as one user turn through the chat template."""
    if rng.random() < 0.25:
        return MixPrompt(family, unit, split, messages=(("user", text),), meta={**meta, "chat": True})
    return MixPrompt(family, unit, split, text, meta=meta)


def _plain_question(rng: random.Random, ctx: _Context) -> MixPrompt:
    unit, question, _ = _question(rng, ctx)
    return MixPrompt("question", unit, ctx.split, rng.choice(QUESTION_TEMPLATES).format(question=question))


def _cot(rng: random.Random, ctx: _Context) -> MixPrompt:
    unit, question, _ = _question(rng, ctx)
    return MixPrompt("cot", unit, ctx.split, rng.choice(COT_TEMPLATES).format(question=question))


def _chat(rng: random.Random, ctx: _Context) -> MixPrompt:
    """System + user turn(s), the conversations `ChatSeed` renders."""
    kind = rng.random()
    if kind < 0.45:
        unit, question, steps = _question(rng, ctx)
        user = question if rng.random() < 0.6 else rng.choice(COT_TEMPLATES).format(question=question)
    elif kind < 0.7:
        topic = rng.choice(ctx.topics)
        unit, user = f"topic:{topic}", rng.choice(CREATIVE_REQUESTS).format(topic=topic)
    else:
        unit, user = _generic_question(rng, ctx.topics)
    messages: list[tuple[str, str]] = []
    if rng.random() < 0.8:
        messages.append(("system", rng.choice(SYSTEM_PROMPTS)))
    if rng.random() < 0.2:  # an earlier exchange, as in a running conversation
        topic = rng.choice(ctx.topics)
        messages += [("user", f"Hi! Can you help me with a question about {topic}?"),
                     ("assistant", "Of course. What would you like to know?")]
    messages.append(("user", user))
    return MixPrompt("chat", unit, ctx.split, messages=tuple(messages))


def _subquestion(rng: random.Random, ctx: _Context) -> MixPrompt:
    unit, question, steps = _question(rng, ctx)
    n = rng.randint(0, min(2, len(steps)))
    done = "".join(f"Sub-question {i + 1}: {s}\n" for i, s in enumerate(steps[:n]))
    template = rng.choice(SUBQUESTION_TEMPLATES)
    return MixPrompt("subquestion", unit, ctx.split, template.format(question=question, steps=done, n=n + 1))


def _evaluation(rng: random.Random, ctx: _Context) -> MixPrompt:
    if ctx.gsm8k:
        unit, record = ctx.gsm8k.draw(rng)
        steps, question = reference_steps(record.get("answer", "")), record["question"]
        answer = " ".join(steps) if rng.random() < 0.5 else " ".join(_perturb(s, rng) for s in steps)
    else:
        unit, question = _generic_question(rng, ctx.topics)
        answer = "I think it depends on the situation."
    text = rng.choice(EVALUATION_TEMPLATES).format(question=question, answer=answer)
    return MixPrompt("evaluation", unit, ctx.split, text)


def _creative(rng: random.Random, ctx: _Context) -> MixPrompt:
    topic = rng.choice(ctx.topics)
    return MixPrompt("creative", f"topic:{topic}", ctx.split, rng.choice(CREATIVE_REQUESTS).format(topic=topic))


BASE_FAMILIES: Mapping[str, Callable[[random.Random, _Context], MixPrompt]] = {
    "tot-gsm8k": _tot_gsm8k,
    "tot-game24": _tot_game24,
    "tot-writing": _tot_writing,
    "tot-generic": _tot_generic,
    "question": _plain_question,
    "cot": _cot,
    "chat": _chat,
    "subquestion": _subquestion,
    "evaluation": _evaluation,
    "creative": _creative,
}
SELF_INSTRUCT = "self-instruct"


def families() -> dict[str, Callable[[random.Random, _Context], MixPrompt]]:
    """The families drawn directly (self-instruct is made from the target's answers)."""
    found = dict(BASE_FAMILIES)
    blocksworld = _blocksworld_family()
    if blocksworld is not None:
        found["tot-blocksworld"] = blocksworld
    return found


FAMILIES = (*BASE_FAMILIES, "tot-blocksworld", SELF_INSTRUCT)
"""Every family name the mix can hold (``tot-blocksworld`` only with that task)."""


def build_mix(records: Sequence[Mapping[str, str]], split: str, per_family: int | Mapping[str, int],
              seed: int = 0, heldout_questions: int = 100) -> list[MixPrompt]:
    """``per_family`` distinct prompts of every family for ``split``, family by family.

    ``records``: GSM8K question/answer objects. Deterministic: prompt i of a family is drawn
    from its own RNG, so asking for more prompts keeps the first ones.
    """
    ctx = _Context(split, Gsm8kPool(records, split, heldout_questions), topics_of(split))
    prompts: list[MixPrompt] = []
    for name, draw in families().items():
        count = per_family if isinstance(per_family, int) else per_family.get(name, 0)
        seen: set[str] = set()
        index = 0
        while len(seen) < count and index < 20 * count:
            prompt = draw(random.Random(f"{seed}-{name}-{split}-{index}"), ctx)
            index += 1
            if prompt.key not in seen:
                seen.add(prompt.key)
                prompts.append(prompt)
    return prompts


# ------------------------------------------------------------------------ self-instruct


def self_instruct_requests(split: str, count: int, seed: int = 0) -> list[MixPrompt]:
    """Prompts asking the target for questions and tasks about the split's topics."""
    topics = topics_of(split)
    requests = []
    for index in range(count):
        rng = random.Random(f"{seed}-{SELF_INSTRUCT}-{split}-{index}")
        topic = rng.choice(topics)
        text = rng.choice(SELF_INSTRUCT_REQUESTS).format(topic=topic)
        prompt = (MixPrompt(SELF_INSTRUCT, f"topic:{topic}", split, messages=(("user", text),))
                  if rng.random() < 0.5 else MixPrompt(SELF_INSTRUCT, f"topic:{topic}", split, text + "\n1."))
        requests.append(prompt)
    return requests


def parse_instructions(reply: str, limit: int = 5) -> list[str]:
    """The questions or tasks a reply lists, one per line, numbering stripped."""
    lines = []
    for line in reply.splitlines():
        line = re.sub(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s*", "", line).strip()
        if 12 <= len(line) <= 300 and line not in lines:
            lines.append(line)
    return lines[:limit]


def self_instruct_prompts(request: MixPrompt, reply: str, limit: int = 5) -> list[MixPrompt]:
    """The target's own questions and tasks from its reply to ``request``, each as a prompt
    (alternately raw and as a chat turn); they keep the request's unit and split."""
    prompts = []
    for i, line in enumerate(parse_instructions(reply, limit)):
        meta = {"from": request.key}
        if i % 2:
            prompts.append(MixPrompt(SELF_INSTRUCT, request.unit, request.split, messages=(("user", line),),
                                     meta=meta))
        else:
            prompts.append(MixPrompt(SELF_INSTRUCT, request.unit, request.split, line + "\n", meta=meta))
    return prompts


def family_counts(prompts: Sequence[MixPrompt]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for prompt in prompts:
        counts[prompt.family] = counts.get(prompt.family, 0) + 1
    return dict(sorted(counts.items()))
