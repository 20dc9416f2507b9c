"""The one training loop both kinds of draft use."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


def fit(model: Any, count: int, batch_loss: Callable[[Sequence[int]], torch.Tensor], steps: int,
        batch_size: int, lr: float, seed: int, desc: str, progress: bool = True) -> list[float]:
    """Train `model`'s trainable parameters on `batch_loss(example indices) -> loss` over
    shuffled epochs of `count` examples: AdamW, warmup + cosine decay, gradients clipped at 1.
    Returns the loss curve."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))))
    order: list[int] = []
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
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
