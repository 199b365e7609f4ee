"""Device, thread and seed handling: CPU by default, CUDA automatically when present."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from pitune_core.common import num_threads_from_env


def default_device(prefer: str | None = None) -> torch.device:
    """Return the device to compute on.

    ``prefer`` (or the ``PITUNE_DEVICE`` environment variable) may force ``cpu`` or ``cuda``;
    otherwise CUDA is used whenever it is available.
    """
    choice = prefer or os.environ.get("PITUNE_DEVICE")
    if choice:
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {choice!r} requested but CUDA is not available on this machine")
        return torch.device(choice)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device) -> str:
    """Where a result was computed, for its log row: ``"cpu, torch 2.13.0"`` or
    ``"cuda (NVIDIA H200), torch 2.11.0+cu130"`` (numbers from different devices differ in the
    last bits, so logs that mix devices say which row ran where)."""
    where = device.type
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    return f"{where}, torch {torch.__version__}"


def configure_threads() -> int:
    """Apply ``PITUNE_NUM_THREADS`` (if set) to torch; returns the thread count in use."""
    n = num_threads_from_env()
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
