"""Constrained decoding on the default pair: speculative vs autoregressive on an extraction workload."""
import time
from langchain_seed import ChatSeed
from langchain_seed.engine import Constraint, SamplingParams
chat = ChatSeed.from_default()
engine, tok = chat.engine, chat.tokenizer
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
          "city": {"type": "string", "maxLength": 20}}, "required": ["name", "age", "city"], "additionalProperties": False}
people = ["Ann is 31 and lives in Paris.", "Bob, 45, moved to Berlin.", "Carla (27) works in Madrid.", "Dan is a 60-year-old from Oslo.",
          "Eve, aged 19, studies in Rome.", "Frank is 38 and lives in Vienna.", "Gina, 52, is from Lisbon.", "Hugo is 23, living in Prague."]
prompts = [tok.apply_chat_template([{"role": "user", "content": f"Extract name, age and city as JSON: {p}"}], add_generation_prompt=True) for p in people]
prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
params = SamplingParams(max_tokens=64, constraint=Constraint.json_schema(schema))
free = SamplingParams(max_tokens=64)
engine.generate(prompts[:1], params, mode="speculative")  # warm up
rows = {}
for name, mode, p in [("constrained autoregressive", "autoregressive", params), ("constrained speculative", "speculative", params),
                      ("constrained scheduled", "scheduled", params), ("free autoregressive", "autoregressive", free), ("free speculative", "speculative", free)]:
    best = None
    for _ in range(2):
        t = time.perf_counter(); out = engine.generate(prompts, p, mode=mode); s = time.perf_counter() - t
        best = s if best is None or s < best else best
    tokens = sum(len(r.token_ids) for r in out)
    mask = sum(r.stats.mask_seconds for r in out); steps = sum(r.stats.verify_steps for r in out)
    rows[name] = (best, tokens, out)
    print(f"{name:28s} {best:6.2f} s  {tokens:4d} tokens  {tokens/best:6.1f} tok/s  acceptance {out.stats.acceptance_rate:.2f}  "
          f"mask {1000*mask/max(steps,1):.2f} ms/round ({100*mask/best:.1f}% of time)")
ar, sp = rows["constrained autoregressive"], rows["constrained speculative"]
print("speculative / autoregressive (constrained):", round(ar[0] / sp[0], 2), "identical:", [r.token_ids for r in ar[2]] == [r.token_ids for r in sp[2]])
print("scheduled / autoregressive (constrained):", round(ar[0] / rows["constrained scheduled"][0], 2))
print(tok.decode(sp[2][0].token_ids))
