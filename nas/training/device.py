"""Where training runs: the device a setting names, and what a seeded step must fork for it."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.errors import OptionError

__all__ = ["cuda_devices", "memory_format", "module_device", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else must parse and exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {str(device)!r} requested but CUDA is not available")
    return resolved


def cuda_devices(device: torch.device) -> list[int]:
    """What ``torch.random.fork_rng`` must fork for work on ``device``: its CUDA device, or none."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def module_device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    if first is None:
        first = next(module.buffers(), None)
    return first.device if first is not None else torch.device("cpu")


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU: there the depthwise convolutions' backward pass dominates a training
    step and runs faster on NHWC tensors (a sampled MnasNet network at 32 px, batch 64, 1 thread:
    1.3x images/s; a width-0.5 proxyless supernet step: 1.8x); CUDA keeps PyTorch's default layout."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format
