"""Box prompts and points without words, on the tiny random-weight model (real forwards)."""

import numpy as np
import pytest
import torch

from napari_editseg.core.prompts import box_cells, box_mask, box_prototypes, check_box, points_prior
from napari_editseg.core.settings import SegmentationSettings

BOX = (5, 6, 35, 32)  # rows 5..34, cols 6..31 of the 45×60 picture


def test_a_box_confines_prior_and_mask_and_survives_refine(segmenter, picture):
    segmenter.set_image(picture)
    free = segmenter.segment("the red disc", mask_threshold=0.0)
    assert free.mask.all() and free.box is None  # threshold 0: everything, without a box
    boxed = segmenter.segment("the red disc", box=BOX, mask_threshold=0.0)
    inside = np.zeros((45, 60), bool)
    inside[5:35, 6:32] = True
    assert np.array_equal(boxed.mask, inside) and boxed.box == BOX
    cells = box_cells(BOX, (45, 60), boxed.prior_work.shape)
    outside = np.ones(boxed.prior_work.shape, bool)
    outside[cells] = False
    assert not boxed.prior_work[outside].any() and boxed.prior_work[cells].any()
    refined = segmenter.refine(boxed, positive=[(40, 50)], mask_threshold=0.0)
    assert refined.box == BOX and np.array_equal(refined.mask, inside)


def test_box_checks_and_grid_cells():
    assert check_box((-3.2, 2.5, 50.4, 59.1), (45, 60)) == (0, 2, 45, 60)
    with pytest.raises(ValueError, match="holds no pixel"):
        check_box((50, 0, 60, 10), (45, 60))
    with pytest.raises(ValueError, match="row0, col0"):
        check_box((1, 2, 3), (45, 60))
    # a 4×4 box in a 40×40 image covers one cell of a 10×10 grid
    assert box_cells((8, 12, 12, 16), (40, 40), (10, 10)) == (slice(2, 3), slice(3, 4))
    assert box_mask((8, 12, 12, 16), (10, 10), (40, 40)).sum() == 1


def test_the_foreground_prototype_comes_from_inside_a_small_box():
    """Planted: features are e0 everywhere, e1 in a 2×2 corner box (4% of the grid)."""
    features = torch.zeros(3, 10, 10)
    features[0] = 1.0
    features[:, :2, :2] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    prior = torch.rand(10, 10)
    settings = SegmentationSettings()
    fg, bg = box_prototypes(features, prior, (0, 0, 2, 2), (10, 10), settings)
    assert torch.allclose(fg[0], torch.tensor([0.0, 1.0, 0.0]))
    fg_free, _ = box_prototypes(features, prior, None, (10, 10), settings)
    assert not torch.allclose(fg_free[0], fg[0])


def test_points_prior_is_likeness_to_the_positive_points():
    features = torch.zeros(2, 6, 6)
    features[0] = 1.0
    features[:, 3:, 3:] = torch.tensor([0.0, 1.0])[:, None, None]
    prior = points_prior(features, [(4.0, 4.0)], None, (6, 6))
    assert prior[3:, 3:].min() == 1.0 and prior[:3].max() == 0.0
    boxed = points_prior(features, [], (0, 0, 3, 3), (6, 6))
    assert boxed[:3, :3].min() == 1.0 and boxed.sum() == 9


def test_points_without_words_take_one_forward_and_obey_the_clicks(segmenter, picture, count_calls):
    segmenter.set_image(picture)
    with count_calls(segmenter.model.unet) as forwards:
        result = segmenter.segment_points(positive=[(20, 18)], negative=[(20, 45)])
    assert forwards.calls == 1
    assert result.mask[20, 18] and not result.mask[20, 45]
    assert result.expression == "" and result.instruction == ""
    assert result.positive == ((20, 18),) and result.negative == ((20, 45),)
    boxed = segmenter.segment_points(box=BOX)
    assert not boxed.mask[~box_mask(BOX, (45, 60))].any()
    with pytest.raises(ValueError, match="positive point or a box"):
        segmenter.segment_points(negative=[(1, 1)])


def test_cached_latents_skip_the_vae_and_change_nothing(segmenter, picture, count_calls):
    segmenter.set_image(picture)
    latents = segmenter.image_latents()
    first = segmenter.segment("the red disc")
    segmenter.set_image(picture[::-1].copy())
    with count_calls(segmenter.model.vae.encoder) as encodes:
        segmenter.set_image(picture, latents=latents)
        again = segmenter.segment("the red disc")
    assert encodes.calls == 0
    assert np.array_equal(first.mask, again.mask) and np.array_equal(first.scores, again.scores)
