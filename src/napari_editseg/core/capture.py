"""Record what ONE denoiser forward sees, and stop it once nothing more is needed.

The family-agnostic half of the capture: the :class:`AttentionStore` a forward fills, and the
block hooks that keep the feature blocks' outputs and end the forward after the last block the
plan needs. Each family installs its own capturing attention processors (its module in
``core/backbones``) and removes them afterwards, so the denoiser is left exactly as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .layout import CapturePlan

SELF_ATTENTION_BUDGET = 256 * 2**20  # bytes of self-attention probabilities computed at once


class AttentionStore:
    """Maps from one forward pass, all float32 and averaged over heads.

    ``cross[name]``: B×N×T probabilities of each image position over the text tokens.
    ``self_sum`` / ``self_count``: running sum of B×N×N self-attention over layers.
    ``features[name]``: B×C×h×w outputs of the feature blocks.
    """

    def __init__(self) -> None:
        self.cross: dict[str, torch.Tensor] = {}
        self.self_sum: Optional[torch.Tensor] = None
        self.self_count = 0
        self.features: dict[str, torch.Tensor] = {}

    def add_self(self, probs: torch.Tensor) -> None:
        self.self_sum = probs if self.self_sum is None else self.self_sum + probs
        self.self_count += 1

    def take_rows(self, rows: slice) -> "AttentionStore":
        """A store holding only the given batch rows (the other rows' maps are dropped)."""
        kept = AttentionStore()
        kept.cross = {name: t[rows] for name, t in self.cross.items()}
        kept.self_sum = None if self.self_sum is None else self.self_sum[rows]
        kept.self_count = self.self_count
        kept.features = {name: t[rows] for name, t in self.features.items()}
        return kept

    @property
    def affinity(self) -> torch.Tensor:
        """Self-attention averaged over the captured layers; rows sum to 1."""
        if self.self_sum is None:
            raise RuntimeError("no self-attention was captured")
        return self.self_sum / self.self_count


class StopForward(Exception):
    """Raised by the hook on the last needed block to end the denoiser forward early."""


@contextmanager
def block_hooks(modules: dict[str, nn.Module], plan: CapturePlan, store: AttentionStore,
                features: Callable[[Any], torch.Tensor], early_exit: bool) -> Iterator[None]:
    """Forward hooks that keep the feature blocks' outputs in ``store`` (``features`` turns a block's
    output into B×C×h×w) and, with ``early_exit``, end the forward after ``plan.stop_after``;
    removed on exit, whatever happens. Shared by every backbone's capture."""
    def keep_output(name: str):
        def hook(_module, _inputs, output):
            store.features[name] = features(output)
        return hook

    def stop(_module, _inputs, _output):
        raise StopForward

    handles = []
    try:
        for name in plan.feature_modules:
            handles.append(modules[name].register_forward_hook(keep_output(name)))
        if early_exit:
            handles.append(modules[plan.stop_after].register_forward_hook(stop))
        yield
    finally:
        for handle in handles:
            handle.remove()
