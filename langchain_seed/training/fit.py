"""The one training loop both kinds of draft use, with optional checkpoints to resume from."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class Checkpoint:
    """Where `fit` saves its whole state every ``every`` steps (atomically), and what run it
    belongs to: a checkpoint whose ``fingerprint`` differs (other data or settings) is ignored."""

    path: Path
    every: int
    fingerprint: str

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            print(f"{self.path}: a checkpoint of another run (other data or settings); starting afresh",
                  file=sys.stderr)
            return None
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        tmp.replace(self.path)


def fit(model: Any, count: int, batch_loss: Callable[[Sequence[int]], torch.Tensor], steps: int,
        batch_size: int, lr: float, seed: int, desc: str, progress: bool = True,
        checkpoint: Checkpoint | None = None) -> list[float]:
    """Train `model`'s trainable parameters on `batch_loss(example indices) -> loss` over
    shuffled epochs of `count` examples: AdamW, warmup + cosine decay, gradients clipped at 1.
    Returns the loss curve.

    With ``checkpoint``, the trainable weights, optimizer, schedule, data order and RNGs are
    saved every ``checkpoint.every`` steps, and a run that finds its own checkpoint continues
    from it: the result is the same as an uninterrupted run's.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))))
    order: list[int] = []
    losses: list[float] = []
    start = 0
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        with torch.no_grad():
            for name, p in named:
                p.copy_(saved["weights"][name])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        order, losses, start = list(saved["order"]), list(saved["losses"]), saved["step"]
    model.train()
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        if len(order) < batch_size:
            fresh = list(range(count))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[:batch_size], order[batch_size:]
        loss = batch_loss(picked)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if checkpoint and ((step + 1) % checkpoint.every == 0 or step + 1 == steps):
            checkpoint.save({"step": step + 1, "weights": {n: p.detach().clone() for n, p in named},
                             "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                             "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "order": order,
                             "losses": losses})
    model.eval()
    return losses


def round_trip(state: dict[str, torch.Tensor], dtype: str = "float16") -> None:
    """Round trained weights through ``dtype`` in place, so measurements match the saved file."""
    with torch.no_grad():
        for tensor in state.values():
            tensor.copy_(tensor.to(getattr(torch, dtype)).float())


def to_device(batch: dict, device: Any) -> dict:
    """A collated batch's tensors moved to ``device`` (the model's)."""
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
