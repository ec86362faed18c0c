"""From the right prior to a pixel-accurate mask: foreground selection that adapts to the
prior, and score maps refined against the image at its own resolution."""

import numpy as np
import pytest
import torch

from napari_editseg.core.discriminate import pixel_features, prototypes, score
from napari_editseg.core.edges import ImageGuide
from napari_editseg.core.image import resize, to_rgb_float
from napari_editseg.core.mask import to_image_size
from napari_editseg.eval.metrics import boundary_f_score

GRID = (32, 32)


def iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def cells(rows, cols):
    m = torch.zeros(GRID, dtype=torch.bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


SMALL = cells((4, 8), (4, 8))  # 16 of 1024 cells
OTHER = cells((20, 26), (20, 26))


def planted(seed=0, dim=16, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
    label = torch.zeros(GRID, dtype=torch.long)
    label[SMALL], label[OTHER] = 1, 2
    f = basis[label.reshape(-1)].T.reshape(dim, *GRID) + noise * torch.randn(dim, *GRID, generator=g)
    return pixel_features([f], GRID)


def grid_mask(features, prior, **kw):
    fg, bg = prototypes(features, prior, 0.9, 0.5, kw.pop("bg_prototypes", 1), 0, **kw)
    return score(features, fg, bg, 10.0) >= 0.5


def test_otsu_takes_a_small_object_that_a_fixed_quantile_swamps():
    features, prior = planted(), SMALL.float()  # a perfect prior on an object of 1.6 % of the grid
    # the 0.9-quantile of a prior that is zero on 98 % of the grid is zero: every cell is "foreground"
    # (two background prototypes: the background holds the other object too)
    assert iou(grid_mask(features, prior, fg_select="quantile", bg_prototypes=2), SMALL) < 0.2
    assert iou(grid_mask(features, prior, fg_select="otsu", bg_prototypes=2), SMALL) > 0.95


def test_both_takes_the_top_share_of_a_broad_prior_and_all_of_a_small_object():
    """A relevance map spreads over the object and its surroundings: Otsu's split takes the
    whole spread, the quantile only its top share. On a perfect prior of a small object the
    quantile takes every cell (its threshold is the minimum) and Otsu's split the object. The
    stricter of the two is right both times."""
    features = planted()
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    broad = torch.exp(-((rows - 5.5) ** 2 + (cols - 5.5) ** 2) / 60.0)  # peaked on SMALL, spread far around it
    # the top 1.5 % of the grid is about SMALL's 16 cells; Otsu's split takes some 200
    fg_otsu, _ = prototypes(features, broad, 0.985, 0.5, 1, 0, "otsu")
    fg_both, _ = prototypes(features, broad, 0.985, 0.5, 1, 0, "both")
    small = torch.nn.functional.normalize(features[:, SMALL].mean(dim=1), dim=0)
    cosine = lambda fg: float(torch.nn.functional.normalize(fg[0], dim=0) @ small)  # noqa: E731
    assert cosine(fg_both) > 0.9 > 0.5 > cosine(fg_otsu)
    assert iou(grid_mask(features, SMALL.float(), fg_select="both", bg_prototypes=2), SMALL) > 0.95


def test_peak_takes_only_the_region_at_the_prior_maximum():
    features = planted()
    prior = SMALL.float() + 0.7 * OTHER.float()  # both above Otsu's split; the peak is on SMALL
    with_both = grid_mask(features, prior, fg_select="otsu", bg_prototypes=2)
    at_peak = grid_mask(features, prior, fg_select="peak", bg_prototypes=2)
    assert iou(with_both, SMALL | OTHER) > 0.9  # both objects' features make the foreground
    assert iou(at_peak, SMALL) > 0.95


IMAGE = (120, 160)


def disc_picture(dtype=np.uint8, grey=False):
    """A disc whose edge no 8-pixel grid can follow, on a noisy background."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:IMAGE[0], :IMAGE[1]]
    truth = (rows - 57.3) ** 2 + (cols - 71.6) ** 2 < 33.7 ** 2
    image = np.where(truth[..., None], [0.85, 0.3, 0.25], [0.25, 0.35, 0.4]) + rng.normal(0, 0.03, (*IMAGE, 3))
    image = np.clip(image, 0, 1)
    if grey:
        image = image.mean(axis=2)
    if np.issubdtype(dtype, np.integer):
        image = (image * np.iinfo(dtype).max).round().astype(dtype)
    return image, truth


def grid_scores(truth, grid=(15, 20)):
    """The decision of a work grid with 8-pixel cells: in or out, by the truth's share of each cell."""
    return (resize(torch.from_numpy(truth.astype(np.float32)), grid) >= 0.5).float()


@pytest.mark.parametrize("dtype, grey", [(np.uint8, False), (np.uint16, True), (np.float32, False)])
def test_guided_filter_follows_an_edge_the_work_grid_cannot_represent(dtype, grey):
    image, truth = disc_picture(dtype, grey)
    upsampled = to_image_size(grid_scores(truth), IMAGE)
    blocky = upsampled >= 0.5
    guide = ImageGuide(to_rgb_float(image))  # the same scaling set_image applies
    refined = guide.refine(upsampled, "guided", cell=8.0, radius=2.0, eps=1e-3) >= 0.5
    assert boundary_f_score(blocky, truth) < 0.85 and iou(blocky, truth) < 0.93
    assert boundary_f_score(refined, truth) > 0.95 and iou(refined, truth) > 0.97


def test_edge_radius_and_eps_change_the_refined_scores():
    image, truth = disc_picture()
    upsampled = to_image_size(grid_scores(truth), IMAGE)
    guide = ImageGuide(to_rgb_float(image))
    base = guide.refine(upsampled, "guided", 8.0, 2.0, 1e-3)
    assert not np.allclose(base, guide.refine(upsampled, "guided", 8.0, 1.0, 1e-3), atol=1e-3)
    assert not np.allclose(base, guide.refine(upsampled, "guided", 8.0, 2.0, 1e-1), atol=1e-3)
    assert np.array_equal(guide.refine(upsampled, "none", 8.0, 2.0, 1e-3), upsampled)
    assert len(guide._cache) == 3  # the image-only part is computed once per radius and eps


def test_boundary_f_score():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    assert boundary_f_score(truth, truth) == 1.0
    assert boundary_f_score(np.roll(truth, 2, axis=1), truth) == 1.0  # within the 2-pixel tolerance
    assert boundary_f_score(np.roll(truth, 6, axis=1), truth) < 0.6
    assert boundary_f_score(np.zeros_like(truth), truth) == 0.0
    assert boundary_f_score(np.zeros_like(truth), np.zeros_like(truth)) == 1.0


# -- through the segmenter on the tiny model ------------------------------------------------------
@pytest.mark.parametrize("name, values", [
    ("edge_refine", ("none", "guided")),
    ("edge_radius", (1.0, 3.0)),
    ("edge_eps", (1e-4, 1e-1)),
    ("fg_select", ("quantile", "otsu")),
    ("fg_select", ("otsu", "both")),
])
def test_each_delineation_setting_changes_the_scores_without_a_forward(segmenter, picture, count_calls,
                                                                       name, values):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc", edge_refine="guided")
    with count_calls(segmenter.model.unet) as forwards:
        a, b = (segmenter.refine(result, **{name: v}) for v in values)
    assert forwards.calls == 0
    assert not np.allclose(a.scores, b.scores, atol=1e-4)
    assert "edges" in b.timings


def test_fg_select_peak_reaches_the_prototypes(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc")
    two_regions = np.zeros(result.prior_work.shape, np.float32)
    two_regions[2:6, 2:6], two_regions[10:14, 10:14] = 1.0, 0.8  # the peak, and a rival
    otsu, peak = (segmenter.refine(result, prior=two_regions, fg_select=v) for v in ("otsu", "peak"))
    features = result.features.reshape(result.features.shape[0], -1)
    at_peak = features[:, (two_regions == 1.0).ravel()].mean(axis=1)
    np.testing.assert_allclose(peak.fg_prototypes[0], at_peak, atol=1e-5)
    assert not np.allclose(otsu.fg_prototypes[0], at_peak, atol=1e-3)
