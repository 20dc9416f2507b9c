"""Property-based: whatever the prompts, tree, temperature, seed and interleaving,
every scheduled output equals the same request's solo output."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_seed.engine import SamplingParams, SeedEngine, SpeculativeConfig
from langchain_seed.engine.drafters import ModelDrafter
from langchain_seed.engine.request import Request
from langchain_seed.engine.scheduler import Scheduler

from engine_fixtures import VOCAB

k_configs = st.sampled_from([(1,), (1, 1, 1), (2, 1), (2, 2, 1), (3,), (1, 2)])
prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12)
requests = st.lists(
    st.tuples(prompts, st.sampled_from([0.0, 0.0, 0.7, 1.0]), st.integers(0, 2**31), st.integers(1, 12)),
    min_size=1, max_size=6,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k_config=k_configs, batch=requests, verify=st.sampled_from(["rounds", "batched"]),
       budget=st.sampled_from([16, 512]), interleave_seed=st.integers(0, 1000))
def test_scheduled_equals_solo(llama_pair, k_config, batch, verify, budget, interleave_seed):
    target, draft = llama_pair
    config = SpeculativeConfig(k_config=k_config, verify=verify, max_batch_tokens=max(budget, 1 + 16))
    params = [SamplingParams(temperature=t, seed=seed, max_tokens=n) for _, t, seed, n in batch]
    solo_engine = SeedEngine(target, draft, config=config)
    try:
        solo = [solo_engine.generate([p], [sp], mode="speculative")[0].token_ids
                for (p, *_), sp in zip(batch, params)]

        # The same requests, admitted at random rounds of one scheduler on the engine's kernels
        # (a sampled token may move with the last bits of the logits, which other kernels change).
        scheduler = Scheduler(target, lambda: ModelDrafter(draft), frozenset(), kernel=solo_engine.linear_kernel,
                              row_limits=solo_engine.row_limits)
        pending = [Request.create(p, sp, config) for (p, *_), sp in zip(batch, params)]
        order = random.Random(interleave_seed)
        submitted = []
        while pending or scheduler.active:
            if pending and (not scheduler.active or order.random() < 0.5):
                count = order.randint(1, len(pending))
                scheduler.submit(pending[:count], start_thread=False)
                submitted += pending[:count]
                pending = pending[count:]
            scheduler.run_round()
    finally:
        solo_engine.close()
    assert [r.handle.result().token_ids for r in submitted] == solo  # submitted in creation order
