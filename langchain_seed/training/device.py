"""Where `distill` runs the target and trains the draft."""

from __future__ import annotations

import platform

import torch


def training_device(name: str, kind: str = "token") -> torch.device:
    """The torch device `distill` runs the target and the training on, checked up front."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name!r} is not a torch device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"--device {name}: MPS is not available on this machine")
    if device.type != "cpu" and kind != "token":
        raise SystemExit(f"--device {name}: only token drafts train off the CPU so far (--kind {kind})")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's, for the report."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
