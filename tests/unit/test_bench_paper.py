"""The benchmark per dataset (`--task`) and the SeeD paper's table (`bench --paper`) on tiny models.

No timing assertions: timings are ratios measured in one run and never asserted in tests.
"""

from __future__ import annotations

import json

import pytest

from langchain_seed.bench import paper, protocol, report, workloads
from langchain_seed.bench.methods import BenchModels, reference_outputs
from langchain_seed.tot import get_task
from langchain_seed.tot.tasks import parse_problem

TINY_TOKENS = {"gsm8k": 6, "writing": 8, "blocksworld": 6}
SERIAL_AND_OURS = ("hf_ar_serial", "seed_sd_serial", "mcsd_serial", "seed_rounds", "seed_batched")


@pytest.fixture(scope="module")
def models(tiny_target, tiny_draft, tiny_tokenizer):
    return BenchModels(tiny_target, tiny_draft, tiny_tokenizer, None, (1, 1, 1), "tiny-target", "tiny-draft")


@pytest.fixture(scope="module")
def greedy_table(models):
    return paper.run_paper(models, 1, 1, methods=SERIAL_AND_OURS, warmup=False, progress=False,
                           max_tokens=TINY_TOKENS)


# ------------------------------------------------------------------------------ datasets


@pytest.mark.parametrize("task", workloads.TASKS)
def test_task_questions_are_reproducible_and_fit_their_task(task):
    questions = workloads.load_task_questions(task, 3)
    assert questions == workloads.load_task_questions(task, 3) and len(set(questions)) == 3
    if task == "blocksworld":
        assert all(len(parse_problem(q).initial.blocks) == workloads.BLOCKSWORLD_BLOCKS for q in questions)
    if task == "writing":
        assert all(len(q.splitlines()) == 4 for q in questions)
    with pytest.raises(ValueError, match="unknown task"):
        workloads.load_task_questions("chess", 1)


def test_tot_step_evaluates_by_the_tasks_evaluator(models):
    reference = protocol.CachedReference(reference_outputs(models))
    for task, evaluator in (("writing", "vote"), ("blocksworld", "value")):
        questions = workloads.load_task_questions(task, 1)
        workload = workloads.build_tot_step(questions, models.tokenizer, reference, 6, 3, task=task)
        thoughts, evaluations = workload.groups
        template = get_task(task)
        assert list(thoughts.prompts) == [template.sample_prompt(questions[0], [], i, 3) for i in (1, 2, 3)]
        assert len(evaluations.prompts) == 3 and workload.settings["template"].endswith(evaluator)
        ending = "Best choice: " if evaluator == "vote" else "the plan so far scores"
        assert all(prompt.endswith(ending) for prompt in evaluations.prompts)
    votes = workloads.evaluation_prompts("writing", "1. A.\n2. B.\n3. C.\n4. D.", ["x", "y", "z"])
    assert [vote.index("Step 1: x") < vote.index("Step 1: y") for vote in votes] == [True, False, True]


def test_tot_full_follows_the_tasks_setup():
    workload = workloads.build_tot_full(["q"], task="writing")
    assert (workload.task, workload.evaluator, workload.n_evaluate, workload.depth) == ("writing", "vote", 3, 1)
    assert workload.max_tokens == workloads.TASK_SETUPS["writing"].max_tokens
    assert workloads.build_tot_full(["q"], 12, "blocksworld", 0.7).settings["temperature"] == 0.7


# ------------------------------------------------------------------------------- the table


def test_paper_table_runs_every_dataset_and_method_losslessly(greedy_table):
    assert list(greedy_table["datasets"]) == list(paper.PAPER_TASKS)
    for task, dataset in greedy_table["datasets"].items():
        rows = {row["method"]: row for row in dataset["rows"]}
        assert list(rows) == list(SERIAL_AND_OURS)
        assert [rows[m]["label"] for m in SERIAL_AND_OURS] == ["AR", "SD", "MCSD", "SeeD", "ours"]
        assert all(row["identical_to_target"] is True for row in rows.values()), task
        assert all(row["new_tokens"] > 0 and row["target_calls"] > 0 and row["peak_rss_mb"] > 0
                   for row in rows.values())
        assert rows["hf_ar_serial"]["acceptance_rate"] is None
        assert all(0 <= rows[m]["acceptance_rate"] <= 1 for m in SERIAL_AND_OURS[1:])
        assert rows["hf_ar_serial"]["speedup_vs_hf_ar_serial"] == 1.0
        assert dataset["settings"]["task"] == task and dataset["settings"]["max_tokens"] == TINY_TOKENS[task]
    assert greedy_table["mcsd_tree"] == [2, 2, 1] and greedy_table["sd_chain"] == [1, 1, 1]
    goals = greedy_table["goals"]["gsm8k"]
    assert [goal["goal"] for goal in goals] == ["seed_rounds >= 1.5x hf_ar_serial", "seed_batched >= 3.0x hf_ar_serial",
                                                "every output identical to the target's"]
    assert goals[-1]["met"] is True  # hf_ar_batched did not run: its goal is not judged


def test_mcsd_drafts_a_tree_and_sd_a_chain(models):
    sd, mcsd = (paper.make_paper_method(name, models) for name in ("seed_sd_serial", "mcsd_serial"))
    try:
        assert sd.config.k_config == (1, 1, 1) and mcsd.config.k_config == paper.MCSD_TREE
        assert sd.mode == mcsd.mode == "speculative" and mcsd.config.acceptance == "auto"
    finally:
        sd.close()
        mcsd.close()


def test_goals_are_judged_from_the_rows():
    def row(method, seconds, identical=True):
        return {"method": method, "seconds": seconds, "identical_to_target": identical}

    document = {"temperature": 0.0, "datasets": {"gsm8k": {"rows": [
        row("hf_ar_serial", 10.0), row("hf_ar_batched", 4.0), row("seed_rounds", 5.0), row("seed_batched", 4.0, False)]}}}
    met = {goal["goal"]: (goal["measured"], goal["met"]) for goal in paper.check_goals(document)["gsm8k"]}
    assert met == {"seed_rounds >= 1.5x hf_ar_serial": (2.0, True), "seed_batched >= 3.0x hf_ar_serial": (2.5, False),
                   "seed_batched >= 1.2x hf_ar_batched": (1.0, False),
                   "every output identical to the target's": (["seed_batched"], False)}
    assert paper.check_goals({**document, "temperature": 0.7}) == {}


def test_markdown_and_plot(greedy_table, tmp_path):
    text = paper.markdown_table(greedy_table)
    for task in paper.PAPER_TASKS:
        assert f"### {task}" in text
    assert "| MCSD | `mcsd_serial` |" in text and "(met)" in text
    assert text.count("| ours | `seed_batched` |") == 3
    pytest.importorskip("matplotlib")
    path = paper.write_plot(greedy_table, tmp_path / "paper.png")
    assert path.stat().st_size > 1000


def test_sampled_table_reports_acceptance_not_identity(models):
    document = paper.run_paper(models, 1, 1, tasks=("blocksworld",), methods=("hf_ar_serial", "mcsd_serial"),
                               temperature=0.7, warmup=False, progress=False, max_tokens=TINY_TOKENS)
    rows = {row["method"]: row for row in document["datasets"]["blocksworld"]["rows"]}
    assert all(row["identical_to_target"] is None for row in rows.values())
    assert 0 <= rows["mcsd_serial"]["acceptance_rate"] <= 1 and document["goals"] == {}


def test_cli_paper_end_to_end(tiny_target, tiny_draft, tiny_tokenizer, tmp_path, capsys, monkeypatch):
    from langchain_seed.cli import main

    monkeypatch.setenv("LANGCHAIN_SEED_HOME", str(tmp_path / "home"))
    target_dir, draft_dir = tmp_path / "target", tmp_path / "draft"
    for model, directory in ((tiny_target, target_dir), (tiny_draft, draft_dir)):
        model.save_pretrained(directory)
        tiny_tokenizer.save_pretrained(directory)
    paths = {name: tmp_path / f"paper.{name}" for name in ("json", "md", "png")}
    argv = ["bench", "--paper", "--quick", "--target", str(target_dir), "--draft", str(draft_dir), "--k-config", "1,1",
            "--max-tokens", "5", "--no-warmup", "--no-progress", "--check-identical",
            "--json", str(paths["json"]), "--markdown", str(paths["md"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "the SeeD paper's table" in out and "goals:" in out
    document = json.loads(paths["json"].read_text())
    assert document["kind"] == "paper-table" and document["model_pair"]["target"] == str(target_dir)
    assert document["machine"]["cpu_model"] and set(document["datasets"]) == set(paper.PAPER_TASKS)
    assert {row["method"] for row in document["datasets"]["writing"]["rows"]} == set(paper.PAPER_METHODS)
    assert "### blocksworld" in paths["md"].read_text()


def test_cli_task_and_temperature_flags():
    from langchain_seed.cli import build_parser

    args = build_parser().parse_args(["bench", "--task", "blocksworld", "--workload", "tot-full",
                                      "--temperature", "0.7"])
    assert (args.task, args.temperature, args.paper) == ("blocksworld", 0.7, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--task", "chess"])
    with pytest.raises(SystemExit, match="whole trees only"):
        args = build_parser().parse_args(["bench", "--temperature", "0.7"])
        args.func(args)


def test_report_shows_unknown_identity_as_a_dash():
    assert report.format_cell(None, "{}") == "-"
