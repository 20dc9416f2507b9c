"""Training draft models for a target by distillation (`langchain-seed distill`).

- `data`: Tree-of-Thoughts prompts over GSM8K questions, from the gsm8k task's templates;
- `targets`: the target's greedy outputs, top-k soft targets and the draft's head ids;
- `token`, `feature`: the two kinds of draft (a small token LM; an EAGLE-style draft
  that also reads the target's hidden states), each its init, loss, measures and saving;
- `fit`: the one training loop (checkpointed, resumable); `measure`: acceptance replay
  and per-token cost;
- `card`: the model card; `device`: where training runs;
- `pipeline`: the stages in order; `command`: the command's arguments and entry point;
- `mix`: the broad prompt mix (every ToT task, questions, chat, sub-questions,
  evaluations, creative requests, self-instruct), held out per family; `user_prompts`: a
  user's JSON-lines prompt file; `generations`: the target's answers (greedy and sampled),
  cached append-only; `acceptance`: acceptance per family, run by the engine;
  `broad`: the stages of `distill --mix` and `distill --prompts`.
"""

from langchain_seed.training.command import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]
