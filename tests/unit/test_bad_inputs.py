"""Every bad input is refused at once with a message naming the problem, and a good
request served by the same engine meanwhile is untouched."""

from langchain_seed.cli.bad_inputs import build_cases, run_cases, tiny_llm_for_table
from langchain_seed.engine import SamplingParams


def test_bad_inputs_are_refused_clearly_without_disturbing_a_running_request():
    llm, other_vocab = tiny_llm_for_table()
    params = SamplingParams(max_tokens=48, ignore_eos=True)
    [solo] = llm.engine.generate([[5, 6, 7]], params, mode="speculative")
    running = llm.engine.submit([5, 6, 7], params)
    outcomes = run_cases(build_cases(llm, other_vocab))
    unclear = [(o.case.description, o.error_type, o.message) for o in outcomes if not o.clear]
    assert unclear == []
    assert len(outcomes) >= 35
    assert max(o.seconds for o in outcomes) < 5
    assert running.result(timeout=120).token_ids == solo.token_ids
