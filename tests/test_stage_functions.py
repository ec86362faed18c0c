"""Steps 5-7 as functions over a forward's maps (any picture size, a supplied prior), the one stored
prior, the prior-source table, and the renamed timings key."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from napari_editseg.core.image import resize
from napari_editseg.core.prior import PRIOR_SOURCES
from napari_editseg.core.settings import SETTING_SPECS
from napari_editseg.core.stages import Segmentation, fit_prior, segment_maps


def disc_prior(shape=(45, 60), centre=(20, 18), radius=10):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius ** 2).astype(np.float32)


def test_steps_5_to_7_run_on_a_forwards_maps_at_any_picture_size(segmenter, picture):
    segmenter.set_image(picture)
    forward = segmenter.forward(["the red disc", "the blue square"])
    maps = forward.maps(1)
    assert maps.instruction.expression == "the blue square" and len(forward) == 2
    assert maps.features[0].ndim == 3 and maps.affinity.shape[0] == maps.affinity_grid[0] * maps.affinity_grid[1]
    plain = forward.settings.replace(edge_refine="none")
    whole = segment_maps(maps, plain, picture.shape[:2])
    tile = segment_maps(maps, plain, (20, 30))  # e.g. a tile's own size
    with pytest.raises(ValueError, match="edge_refine needs the picture"):
        segment_maps(maps, forward.settings, (20, 30))
    assert whole.mask.shape == picture.shape[:2] and tile.mask.shape == tile.prior.shape == (20, 30)
    np.testing.assert_array_equal(whole.prior_work, tile.prior_work)  # the same maps, the same grid
    alone = segmenter.segment_batch(["the red disc", "the blue square"], edge_refine="none")[1]
    again = segment_maps(maps, plain, picture.shape[:2])
    np.testing.assert_array_equal(again.scores, alone.scores)
    np.testing.assert_array_equal(again.mask, alone.mask)


def test_the_prior_is_stored_once_and_the_image_size_prior_derived(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("the red disc")
    assert "prior" not in {f.name for f in dataclasses.fields(Segmentation)}
    np.testing.assert_allclose(result.prior, resize(torch.from_numpy(result.prior_work), picture.shape[:2]),
                               atol=1e-6)
    moved = dataclasses.replace(result, prior_work=np.roll(result.prior_work, 3, axis=1))
    assert not np.array_equal(moved.prior, result.prior)  # nothing to keep in sync by hand


def test_a_supplied_prior_replaces_step_5_and_refine_takes_it_too(segmenter, picture):
    segmenter.set_image(picture)
    prior = disc_prior()
    supplied = segmenter.segment("the red disc", prior=prior)
    grid = supplied.prior_work.shape
    np.testing.assert_array_equal(supplied.prior_work, resize(torch.from_numpy(prior), grid).clamp(0, 1).numpy())
    assert supplied.confidence == 1.0
    # the same forward's features re-scored with the prior: bit for bit what segment(prior=) gives
    refined = segmenter.refine(segmenter.segment("the red disc"), prior=prior)
    for name in ("prior_work", "features", "scores", "mask"):
        np.testing.assert_array_equal(getattr(refined, name), getattr(supplied, name))
    # on the work grid or at the image's size: the same prior
    on_grid = segmenter.segment("the red disc", prior=supplied.prior_work)
    np.testing.assert_array_equal(on_grid.scores, supplied.scores)
    elsewhere = segmenter.segment("the red disc", prior=disc_prior(centre=(20, 46), radius=8))
    assert not np.array_equal(elsewhere.mask, supplied.mask)
    assert supplied.prior[20, 18] > 0.9 and supplied.prior[20, 46] < 0.1


def test_a_supplied_prior_is_confined_to_the_box_and_bad_ones_are_refused(segmenter, picture):
    segmenter.set_image(picture)
    boxed = segmenter.segment("the red disc", box=(0, 0, 45, 30), prior=np.ones((45, 60), np.float32))
    assert boxed.prior[:, 40:].max() == 0 and boxed.prior[:, :20].min() > 0.5
    assert segmenter.segment("the red disc", prior=disc_prior() > 0.5).mask.any()  # a bool mask works
    for bad, why in (
        (np.ones((45, 60, 3)), "2-D map"), (np.full((45, 60), 2.0), r"\[0, 1\]"),
        (np.full((45, 60), np.nan), "finite"), ("disc", "2-D map"), (np.zeros((0, 4)), "2-D map"),
    ):
        with pytest.raises(ValueError, match=why):
            segmenter.segment("the red disc", prior=bad)
        with pytest.raises(ValueError, match=why):
            fit_prior(bad, (4, 4))


def test_prior_sources_are_one_table_the_setting_and_the_forward_read(segmenter, picture, count_rows):
    assert set(SETTING_SPECS["prior_source"].choices) == set(PRIOR_SOURCES)
    for name, source in PRIOR_SOURCES.items():
        segmenter.set_image(picture)
        with count_rows(segmenter.model.denoiser) as counter:
            forward = segmenter.forward(["the red disc"], prior_source=name)
        assert counter.rows == 1 + source.relevance  # the baseline's row runs only for a source that reads it
        assert (forward.maps(0).relevance is not None) == source.relevance
        result = segmenter.segment("the red disc", prior_source=name)
        assert result.settings.prior_source == name and result.prior_work.max() > 0


def test_the_timings_key_unet_is_now_denoiser_and_still_reads_for_one_release(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.refine(segmenter.segment("the red disc"), mask_threshold=0.4)  # survives a refine
    assert "denoiser" in result.timings and "unet" not in list(result.timings)
    with pytest.warns(DeprecationWarning, match="timings\\['denoiser'\\]"):
        assert result.timings["unet"] == result.timings["denoiser"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert result.timings.get("unet") == result.timings["denoiser"]
    assert result.timings.get("nothing", 7) == 7
    with pytest.raises(KeyError):
        result.timings["nothing"]
