"""The target's answers to the mix, cached append-only so that an interrupted run loses nothing.

A `Job` is one prompt answered one way: greedily, or sampled at a temperature with a seed
(the draft must learn the contexts sampled decoding reaches, not only the greedy path).
Each finished batch is appended to a JSON-lines file, one line a job under its content
hash (prompt, decoding, settings); a rerun skips the jobs found there. Batches are formed
from the whole job list, so a rerun makes the same batches (and the same samples: each
batch samples from a generator seeded by its jobs' keys) whether or not it was interrupted.
A line cut short by an interruption is dropped when the file is next opened.

Each line keeps the output token ids and the target's top-k log-probabilities (temperature 1,
3 decimals) at every output position: the soft targets of the draft's loss.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from langchain_seed.training.mix import MixPrompt
from langchain_seed.training.targets import Example, eos_ids, trim_output


@dataclass(frozen=True)
class Job:
    """One prompt's answer to make: ``temperature`` 0 is greedy; ``sample`` numbers the draws."""

    prompt: MixPrompt
    prompt_ids: tuple[int, ...]
    temperature: float = 0.0
    sample: int = 0

    def key(self, settings: Sequence[Any]) -> str:
        content = json.dumps([self.prompt.key, list(self.prompt_ids), self.temperature, self.sample, list(settings)])
        return hashlib.sha256(content.encode()).hexdigest()[:32]


def jobs_for(prompts: Iterable[MixPrompt], prompt_ids: Sequence[Sequence[int]], temperatures: Sequence[float] = (),
             samples: int = 1) -> list[Job]:
    """A greedy job per prompt, plus ``samples`` sampled jobs at each temperature."""
    jobs = []
    for prompt, ids in zip(prompts, prompt_ids):
        jobs.append(Job(prompt, tuple(ids)))
        jobs += [Job(prompt, tuple(ids), t, s) for t in temperatures for s in range(samples)]
    return jobs


class GenerationCache:
    """The append-only JSON-lines file of finished jobs, read once when opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.is_file():
            self._read()

    def _read(self) -> None:
        good_bytes = 0
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # cut short by an interruption: dropped below
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.records[record["key"]] = record
                good_bytes += len(line)
        if good_bytes < self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(good_bytes)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def append(self, records: Sequence[dict]) -> None:
        """Append finished records and flush them to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records.update((r["key"], r) for r in records)


def _batches(jobs: Sequence[Job], batch_size: int, chunk_batches: int = 8) -> list[list[int]]:
    """Job indices in batches: within chunks of a few batches, sorted by decoding and length."""
    chunk = batch_size * chunk_batches
    batches = []
    for start in range(0, len(jobs), chunk):
        order = sorted(range(start, min(start + chunk, len(jobs))),
                       key=lambda i: (jobs[i].temperature, len(jobs[i].prompt_ids), i))
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            # one decoding per batch: split where the temperature changes
            groups: dict[float, list[int]] = {}
            for j in batch:
                groups.setdefault(jobs[j].temperature, []).append(j)
            batches += list(groups.values())
    return batches


def _topk_rows(logits: torch.Tensor, top_k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Top-k ids and log-probs (3 decimals) of each row of ``logits`` `[n, vocab]`."""
    values, indices = torch.log_softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
    return indices.tolist(), [[round(v, 3) for v in row] for row in values.tolist()]


def _generate(model: Any, tokenizer: Any, jobs: Sequence[Job], keys: Sequence[str], max_new_tokens: int,
              top_k: int) -> list[dict]:
    """One batch: left-padded generation (greedy or sampled) and the top-k at each output position."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": [list(j.prompt_ids) for j in jobs]}, return_tensors="pt").to(model.device)
    temperature = jobs[0].temperature
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else \
        {"do_sample": False}
    torch.manual_seed(int(hashlib.sha256("".join(keys).encode()).hexdigest()[:8], 16))
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id, output_logits=True,
                             return_dict_in_generate=True, **sampling)
    width, stops = enc["input_ids"].shape[1], eos_ids(model, tokenizer)
    steps = torch.stack(out.logits, dim=1)  # [batch, new, vocab]
    records = []
    for row, (job, key) in enumerate(zip(jobs, keys)):
        output = trim_output(out.sequences[row, width:].tolist(), stops, pad_id)
        topk_ids, topk_logprobs = _topk_rows(steps[row, : len(output)], top_k)
        records.append({"key": key, "family": job.prompt.family, "split": job.prompt.split,
                        "temperature": job.temperature, "prompt_ids": list(job.prompt_ids), "output_ids": output,
                        "topk_ids": topk_ids, "topk_logprobs": topk_logprobs})
    return records


def generate_all(model: Any, tokenizer: Any, jobs: Sequence[Job], cache: GenerationCache, batch_size: int,
                 max_new_tokens: int, top_k: int, progress: bool = True) -> list[dict]:
    """Every job's record, in job order: from the cache, or generated (a batch at a time) and
    appended to it."""
    settings = [max_new_tokens, top_k]
    keys = [job.key(settings) for job in jobs]
    bar = tqdm(total=len(jobs), desc="target answers", unit="seq", disable=not progress)
    for batch in _batches(jobs, batch_size):
        missing = [i for i in batch if keys[i] not in cache]
        if missing:
            records = _generate(model, tokenizer, [jobs[i] for i in batch], [keys[i] for i in batch],
                                max_new_tokens, top_k)
            cache.append([r for r in records if r["key"] not in cache])
        bar.update(len(batch))
    bar.close()
    return [cache.records[key] for key in keys]


def to_example(record: dict) -> Example:
    """A cached record as a training `Example` (top-k at the output positions only)."""
    ids = torch.tensor(record["prompt_ids"] + record["output_ids"], dtype=torch.long)
    n_out = len(record["output_ids"])
    top_k = len(record["topk_ids"][0]) if record["topk_ids"] else 1
    topk_ids = torch.tensor(record["topk_ids"], dtype=torch.int32).reshape(n_out, top_k)
    topk_logprobs = torch.tensor(record["topk_logprobs"], dtype=torch.float16).reshape(n_out, top_k)
    meta = {"shape": record["family"], "family": record["family"], "temperature": record["temperature"]}
    return Example(ids, len(record["prompt_ids"]), topk_ids, topk_logprobs, meta)
