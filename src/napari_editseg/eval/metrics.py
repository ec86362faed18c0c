"""Referring-segmentation metrics, exactly as zero-shot RIS papers compute them.

Per sample: I = |P ∧ G|, U = |P ∨ G|, IoU = I / U (0 when U = 0). Over a split:
mIoU = 100 · mean IoU, oIoU = 100 · ΣI / ΣU (int64 sums), Prec@X = 100 · share of
samples with IoU ≥ X (or > X with ``strict``). Metrics are computed from the per-sample
records sorted by key, so a split run whole or in shards and merged gives identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class SampleScore:
    key: str  # unique per (ref, sentence)
    intersection: int
    union: int
    failed: bool = False  # the method raised: scored as an empty prediction
    empty: bool = False  # the prediction had no pixel
    error: Optional[str] = None

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union else 0.0


def score_sample(key: str, prediction: Optional[np.ndarray], truth: np.ndarray, error: Optional[str] = None
                 ) -> SampleScore:
    """I and U of one prediction; ``None`` (a failure) counts as empty, its truth still in U."""
    truth = np.asarray(truth, bool)
    if prediction is None:
        return SampleScore(key, 0, int(truth.sum()), failed=True, empty=True, error=error)
    prediction = np.asarray(prediction, bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction of shape {prediction.shape} for ground truth of shape {truth.shape} "
                         f"(sample {key}): resize to the original image size, never broadcast")
    intersection = int(np.count_nonzero(prediction & truth))
    union = int(np.count_nonzero(prediction | truth))
    return SampleScore(key, intersection, union, empty=not prediction.any())


def summarise(scores: Iterable[SampleScore], strict: bool = False) -> dict:
    """mIoU, oIoU and Prec@X in percent, with counts, from per-sample scores."""
    ordered = sorted(scores, key=lambda s: s.key)
    if len({s.key for s in ordered}) != len(ordered):
        raise ValueError("duplicate sample keys: shards overlap")
    n = len(ordered)
    inter = np.array([s.intersection for s in ordered], np.int64)
    union = np.array([s.union for s in ordered], np.int64)
    iou = np.divide(inter, union, out=np.zeros(n, np.float64), where=union > 0)
    total_union = int(union.sum())
    precision = {
        f"{t:.1f}": 100.0 * float(np.mean(iou > t if strict else iou >= t)) if n else 0.0 for t in THRESHOLDS
    }
    return {
        "n_samples": n,
        "mIoU": 100.0 * float(iou.mean()) if n else 0.0,
        "oIoU": 100.0 * int(inter.sum()) / total_union if total_union else 0.0,
        "precision": precision,
        "precision_strict": strict,
        "sum_intersection": int(inter.sum()),
        "sum_union": total_union,
        "failures": sum(s.failed for s in ordered),
        "empty_predictions": sum(s.empty for s in ordered),
    }


def boundary_f_score(prediction: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F-score (DAVIS / BSDS style): the harmonic mean of the share of predicted
    boundary pixels within ``tolerance`` pixels of the true boundary and the share of true
    boundary pixels within ``tolerance`` of the predicted one. A mask's boundary is its pixels
    with a 4-neighbour outside it (the image border counts as outside). 1 when both are empty."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    def boundary(mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, bool)
        return mask & ~binary_erosion(mask, border_value=0)

    predicted, true = boundary(prediction), boundary(truth)
    if not predicted.any() and not true.any():
        return 1.0
    if not predicted.any() or not true.any():
        return 0.0
    precision = float((distance_transform_edt(~true)[predicted] <= tolerance).mean())
    recall = float((distance_transform_edt(~predicted)[true] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
