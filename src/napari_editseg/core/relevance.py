"""Where the instruction changes what the denoiser computes: the relevance prior source.

An editing model must decide where to edit; the clearest trace of that decision in one
forward is the difference the instruction makes to the output at each position, against
the same forward with an empty text (Watch-Your-Steps; DiffEdit between two prompts).
Both rows share the noise and the image, so everything but the text cancels.
"""

from __future__ import annotations

import torch

from .image import normalise01


def robust_clip(x: torch.Tensor) -> torch.Tensor:
    """Clip at Q3 + 1.5·IQR (Tukey's upper fence), so a few extreme positions don't flatten
    the rest of the map after min-max scaling (Watch-Your-Steps' clip)."""
    q1, q3 = torch.quantile(x.reshape(-1).float(), torch.tensor([0.25, 0.75], dtype=torch.float32))
    return x.clamp(max=float(q3 + 1.5 * (q3 - q1)))


def relevance_map(with_text: torch.Tensor, without_text: torch.Tensor) -> torch.Tensor:
    """h×w in [0, 1] from S×C×h×w outputs with and without the instruction (S noise draws).

    |difference| summed over channels, averaged over the draws (DiffEdit), robustly clipped
    and min-max scaled.
    """
    difference = (with_text.float() - without_text.float()).abs().sum(dim=1).mean(dim=0)
    return normalise01(robust_clip(difference))
