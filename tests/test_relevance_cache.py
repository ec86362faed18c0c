"""One denoiser row per expression: the relevance prior's baseline-text rows run once per image and
forward settings, in a forward of their own, and are reused until anything they depend on changes."""

import numpy as np
import pytest

from napari_editseg import EditSegmenter

# settings the baseline rows depend on, each with a value other than the default
INVALIDATING = {
    "instruction_template": "turn the {} into gold",
    "relevance_baseline": "empty",
    "seed": 1,
    "timestep": 500,
    "noise_samples": 2,
    "relevance_from": "noise",
    "prior_resolutions": (8,),
    "resolution": 64,
}
# settings that change only how step 5 or steps 6-7 read the maps: the kept rows still serve
KEEPING = {"prior_source": "fused", "propagation_steps": 1, "work_resolution": 8, "mask_threshold": 0.4}


def rows_of(segmenter, count_rows, expression="the blue square", **overrides):
    with count_rows(segmenter.model.denoiser) as counter:
        segmenter.segment(expression, **overrides)
    return counter.rows


@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_flux_dir"])
def test_a_second_expression_on_the_same_image_runs_one_denoiser_row(request, family, picture, count_rows):
    extra = {"resolution": 64} if family == "tiny_flux_dir" else {}
    segmenter = EditSegmenter.from_pretrained(str(request.getfixturevalue(family)), device="cpu", **extra)
    segmenter.set_image(picture)
    with count_rows(segmenter.model.denoiser) as first:
        segmenter.segment("the red disc")
    assert (first.calls, first.rows) == (2, 2)  # the expression's row, then the baseline's in a forward of its own
    with count_rows(segmenter.model.denoiser) as second:
        segmenter.segment("the blue square")
    assert (second.calls, second.rows) == (1, 1)
    with count_rows(segmenter.model.denoiser) as batch:
        segmenter.segment_batch(["the red disc", "the blue square", "a green dog"])
    assert (batch.calls, batch.rows) == (1, 3)


def test_a_kept_baseline_gives_bit_for_bit_what_running_it_gives(tiny_model_dir, segmenter, picture):
    segmenter.set_image(picture)
    segmenter.segment("the red disc")
    kept = segmenter.segment("the blue square")  # its baseline was kept from the first call
    fresh = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu")
    fresh.set_image(picture)
    ran = fresh.segment("the blue square")  # runs its baseline
    for name in ("prior_work", "features", "scores", "mask"):
        assert np.array_equal(getattr(kept, name), getattr(ran, name)), name


@pytest.mark.parametrize("name", sorted(INVALIDATING))
def test_a_setting_the_baseline_depends_on_runs_it_again(segmenter, picture, count_rows, name):
    segmenter.set_image(picture)
    segmenter.segment("the red disc")
    samples = INVALIDATING[name] if name == "noise_samples" else 1
    assert rows_of(segmenter, count_rows, **{name: INVALIDATING[name]}) == 2 * samples
    assert rows_of(segmenter, count_rows, **{name: INVALIDATING[name]}) == samples  # and keeps that one


@pytest.mark.parametrize("name", sorted(KEEPING))
def test_a_setting_of_the_later_stages_keeps_the_baseline(segmenter, picture, count_rows, name):
    segmenter.set_image(picture)
    segmenter.segment("the red disc")
    assert rows_of(segmenter, count_rows, **{name: KEEPING[name]}) == 1


def test_a_new_image_runs_the_baseline_and_its_cached_latents_bring_it_back(segmenter, picture, count_rows):
    segmenter.set_image(picture)
    segmenter.segment("the red disc")
    latents = segmenter.image_latents()
    segmenter.set_image(picture[::-1].copy())
    assert rows_of(segmenter, count_rows) == 2
    segmenter.set_image(picture[::-1].copy())  # the same content, encoded again: other latents
    assert rows_of(segmenter, count_rows) == 2
    segmenter.set_image(picture, latents=latents)  # a caller's cache (the widget's) brings the latents back
    assert rows_of(segmenter, count_rows) == 1


def test_a_stack_keeps_a_baseline_per_plane_within_the_budget(segmenter, picture, count_rows):
    planes = [np.roll(picture, 9 * k, axis=1) for k in range(3)]
    latents = []
    for plane in planes:  # the first expression on each plane: its baseline runs
        segmenter.set_image(plane)
        latents.append(segmenter.image_latents())
        assert rows_of(segmenter, count_rows, "the red disc") == 2
    for plane, cached in zip(planes, latents):  # the next expression, plane by plane, as the widget runs a stack
        segmenter.set_image(plane, latents=cached)
        assert rows_of(segmenter, count_rows) == 1
    one = segmenter.baselines.nbytes // len(segmenter.baselines)
    budget, segmenter.baselines.budget = segmenter.baselines.budget, 2 * one
    try:
        for plane, cached in zip(planes, latents):
            segmenter.set_image(plane, latents=cached)
            segmenter.segment("the red disc", seed=3)  # three new baselines: only two fit
        assert len(segmenter.baselines) == 2 and segmenter.baselines.nbytes <= 2 * one
        segmenter.set_image(planes[0], latents=latents[0])
        assert rows_of(segmenter, count_rows, seed=3) == 2  # the least recently used went first
    finally:
        segmenter.baselines.budget = budget


def test_a_supplied_prior_runs_no_baseline(segmenter, picture, count_rows):
    segmenter.set_image(picture[:, ::-1].copy())
    prior = np.zeros(picture.shape[:2], np.float32)
    prior[10:30, 8:28] = 1.0
    assert rows_of(segmenter, count_rows, prior=prior) == 1
