"""What one denoiser forward must record, whatever the family: the capture plan.

Each family's layout (``core/backbones``) resolves the "auto" settings from the model's configs
and makes a :class:`CapturePlan`; the capture reads it, and steps 5-7 read the grids it names.
A *level* is a grid of the denoiser: level 0 is the latent grid, level l that grid halved l times.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CapturePlan:
    """What one denoiser forward must record, and after which block it may stop."""

    cross_layers: tuple[str, ...]  # attention modules whose image→text probabilities make the prior
    cross_levels: tuple[int, ...]  # level of each cross layer
    self_layers: tuple[str, ...]  # attention modules whose image→image probabilities make the affinity
    affinity_level: int
    feature_modules: tuple[str, ...]  # blocks whose outputs are the features
    stop_after: str  # top-level block after which nothing is needed


def snap(side: float, multiple: int) -> int:
    """Round a side to the nearest positive multiple."""
    return max(multiple, int(round(side / multiple)) * multiple)
