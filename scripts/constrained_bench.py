"""Constrained decoding on the default pair: speculative vs autoregressive on an extraction workload.

    flock /tmp/langchain-seed-cpu.lock .venv/bin/python scripts/constrained_bench.py
"""

import time

from langchain_seed import ChatSeed
from langchain_seed.engine import Constraint, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "age": {"type": "integer", "minimum": 0, "maximum": 130},
                   "city": {"type": "string", "maxLength": 20}},
    "required": ["name", "age", "city"], "additionalProperties": False,
}
PEOPLE = ["Ann is 31 and lives in Paris.", "Bob, 45, moved to Berlin.", "Carla (27) works in Madrid.",
          "Dan is a 60-year-old from Oslo.", "Eve, aged 19, studies in Rome.", "Frank is 38 and lives in Vienna.",
          "Gina, 52, is from Lisbon.", "Hugo is 23, living in Prague."]


def main() -> None:
    chat = ChatSeed.from_default()
    engine, tokenizer = chat.engine, chat.tokenizer
    prompts = []
    for person in PEOPLE:
        message = {"role": "user", "content": f"Extract name, age and city as JSON: {person}"}
        encoded = tokenizer.apply_chat_template([message], add_generation_prompt=True)
        prompts.append(list(encoded["input_ids"]) if hasattr(encoded, "keys") else list(encoded))
    constrained = SamplingParams(max_tokens=64, constraint=Constraint.json_schema(SCHEMA))
    free = SamplingParams(max_tokens=64)
    engine.generate(prompts[:1], constrained, mode="speculative")  # warm up
    runs = [("constrained autoregressive", "autoregressive", constrained),
            ("constrained speculative", "speculative", constrained),
            ("constrained scheduled", "scheduled", constrained),
            ("free autoregressive", "autoregressive", free), ("free speculative", "speculative", free)]
    rows = {}
    for name, mode, params in runs:
        best, out = None, None
        for _ in range(2):
            started = time.perf_counter()
            out = engine.generate(prompts, params, mode=mode)
            seconds = time.perf_counter() - started
            best = seconds if best is None or seconds < best else best
        assert out is not None and best is not None
        tokens = sum(len(r.token_ids) for r in out)
        mask = sum(r.stats.mask_seconds for r in out)
        steps = sum(r.stats.verify_steps for r in out)
        rows[name] = (best, out)
        print(f"{name:28s} {best:6.2f} s  {tokens:4d} tokens  {tokens / best:6.1f} tok/s  "
              f"acceptance {out.stats.acceptance_rate:.2f}  mask {1000 * mask / max(steps, 1):.2f} ms/round "
              f"({100 * mask / best:.1f}% of time)")
    (ar_seconds, ar), (sp_seconds, sp) = rows["constrained autoregressive"], rows["constrained speculative"]
    identical = [r.token_ids for r in ar] == [r.token_ids for r in sp]
    print("speculative / autoregressive (constrained):", round(ar_seconds / sp_seconds, 2), "identical:", identical)
    print("scheduled / autoregressive (constrained):", round(ar_seconds / rows["constrained scheduled"][0], 2))
    print(tokenizer.decode(sp[0].token_ids))


if __name__ == "__main__":
    main()
