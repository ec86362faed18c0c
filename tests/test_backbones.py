"""The contract every registered backbone keeps, on tiny random-weight models saved locally and
loaded through ``from_pretrained`` like a user's: stages 5-7 read only what this checks.

Per-family parity with the diffusers pipeline's first denoiser call lives beside each family's
builder (tests/test_segmenter.py for InstructPix2Pix, tests/test_backbone_*.py for the others).
The contract also runs a family added here as docs/method.md's recipe says — one module
(tests/sd_family.py) and one registry line — which must pass it and appear in the widget's list.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from napari_editseg import EditSegmenter, hub
from napari_editseg.core.backbones import BACKBONES, UnknownPipelineError, backbone_for, families
from napari_editseg.testing import build_tiny_pipeline

# family fixture name → settings that keep its tiny model small
FAMILIES = {
    "tiny_model_dir": {},
    "tiny_sdxl_dir": {},
    "tiny_cosxl_dir": {},
    "tiny_flux_dir": {"resolution": 64},
    "tiny_sd_dir": {},
}


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    """A tiny Stable Diffusion text-to-image folder, read by the test family of tests/sd_family.py,
    registered for this module by its one line."""
    from diffusers import StableDiffusionPipeline

    BACKBONES["StableDiffusionPipeline"] = "sd_family:TextToImageSD"  # the family's one registry line
    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(**build_tiny_pipeline(in_channels=4).components,
                            requires_safety_checker=False).save_pretrained(folder)
    yield folder
    del BACKBONES["StableDiffusionPipeline"]


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def family(request):
    folder = request.getfixturevalue(request.param)
    return EditSegmenter.from_pretrained(str(folder), device="cpu", **FAMILIES[request.param])


def hooks_and_processors(denoiser):
    processors = dict(getattr(denoiser, "attn_processors", {}))
    hooks = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in denoiser.named_modules()}
    return processors, hooks


def test_every_registered_family_is_tested(request):
    tested = {}
    for fixture in FAMILIES:
        folder = request.getfixturevalue(fixture)
        tested[fixture] = json.loads((folder / "model_index.json").read_text())["_class_name"]
    assert set(tested.values()) == set(BACKBONES), "each registered pipeline class needs a tiny model here"


def test_registry_resolves_each_class_and_refuses_others():
    for pipeline_class in BACKBONES:
        assert backbone_for(pipeline_class).pipeline_class == pipeline_class
    with pytest.raises(UnknownPipelineError, match="StableDiffusionUpscalePipeline.*reads"):
        backbone_for("StableDiffusionUpscalePipeline")


def test_the_added_family_is_one_module_and_one_line_and_shows_in_the_widgets_list(tiny_sd_dir):
    from sd_family import TextToImageSD

    assert backbone_for("StableDiffusionPipeline") is TextToImageSD and TextToImageSD in families()
    assert hub.KNOWN_MODELS["example/tiny-sd-text-to-image"] == TextToImageSD.known_models[
        "example/tiny-sd-text-to-image"]
    assert list(hub.KNOWN_MODELS)[-1] == "example/tiny-sd-text-to-image"  # in registry order, after the others
    assert set(hub.components()) >= set(TextToImageSD.components)
    segmenter = EditSegmenter.from_pretrained(str(tiny_sd_dir), device="cpu")
    assert type(segmenter.model) is TextToImageSD and segmenter.resolve_settings().timestep == 600


@pytest.mark.skipif(sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),  # before Qt starts
                    reason="no X display: run the suite with tools/run-tests (it uses Xvfb)")
def test_the_added_family_shows_in_a_new_widgets_model_list(tiny_sd_dir, make_napari_viewer):
    """Issue 22's "appears in the widget's list": the combo box a user picks from, not only the hub's mapping."""
    from napari_editseg._widget import EditSegWidget

    widget = EditSegWidget(make_napari_viewer())
    offered = [value for _, value in widget.models.choices()]
    assert "example/tiny-sd-text-to-image" in offered and "timbrooks/instruct-pix2pix" in offered


def test_the_hub_lists_what_the_families_declare():
    listed = dict(hub.KNOWN_MODELS)
    assert listed == {model: title for family in families() for model, title in family.known_models.items()}
    assert "timbrooks/instruct-pix2pix" in listed and "black-forest-labs/FLUX.1-Kontext-dev" in listed
    assert set(hub.components()) == {part for family in families() for part in family.components}


def test_segment_gives_a_mask_and_leaves_the_denoiser_as_it_was(family, picture):
    before = hooks_and_processors(family.model.denoiser)
    family.set_image(picture)
    result = family.segment("the red disc")
    assert result.mask.shape == picture.shape[:2] and result.mask.dtype == bool
    assert 0 <= result.prior.min() and result.prior.max() <= 1
    assert result.features.ndim == 3 and result.features.shape[1:] == result.prior_work.shape
    after = hooks_and_processors(family.model.denoiser)
    assert after[1] == before[1]
    assert after[0].keys() == before[0].keys() and all(after[0][k] is v for k, v in before[0].items())


def test_a_failing_forward_leaves_the_denoiser_as_it_was(family, picture):
    before = hooks_and_processors(family.model.denoiser)
    family.set_image(picture)
    first = dict(family.model.denoiser.named_modules())[family.layout.blocks[0]]

    def explode(*_):
        raise RuntimeError("boom")

    handle = first.register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            family.forward(["the red disc"])
    finally:
        handle.remove()
    after = hooks_and_processors(family.model.denoiser)
    assert after[1] == before[1] and all(after[0][k] is v for k, v in before[0].items())


def test_early_exit_runs_no_block_after_the_last_needed(family, picture):
    denoiser = family.model.denoiser
    modules = dict(denoiser.named_modules())
    plan = family.layout.plan(family.resolve_settings())
    later = family.layout.blocks[family.layout.blocks.index(plan.stop_after) + 1:]
    assert later, "the default plan should leave blocks to skip"
    calls = {name: 0 for name in (plan.stop_after, *later)}
    handles = [modules[name].register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
               for name in calls]
    try:
        family.set_image(picture)
        forward = family.forward(["the red disc"], prior_source="attention")
        assert forward.noise_pred is None
        assert calls[plan.stop_after] == 1 and all(calls[name] == 0 for name in later)
        whole = family.forward(["the red disc"], prior_source="attention", early_exit=False)
        assert whole.noise_pred is not None and all(calls[name] == 1 for name in later)
    finally:
        for handle in handles:
            handle.remove()
    assert whole.noise_pred.ndim == 4 and whole.noise_pred.shape[-2:] == whole.latent_grid


def test_store_shapes_follow_the_plan(family, picture):
    family.set_image(picture)
    forward = family.forward(["the red disc", "the blue square"], prior_source="attention")
    plan, (h, w) = forward.plan, forward.latent_grid
    for name, level in zip(plan.cross_layers, plan.cross_levels):
        maps = forward.store.cross[name]
        assert maps.shape[:2] == (2, (h >> level) * (w >> level))
        assert maps.shape[2] >= 1 and float(maps.min()) >= 0
    affinity = forward.store.affinity
    n = (h >> plan.affinity_level) * (w >> plan.affinity_level)
    assert affinity.shape == (2, n, n)
    torch.testing.assert_close(affinity.sum(-1), torch.ones(2, n), atol=1e-4, rtol=0)
    for name in plan.feature_modules:
        assert forward.store.features[name].shape[0] == 2 and forward.store.features[name].ndim == 4


def test_batched_images_equal_one_at_a_time(family, picture):
    """What the forward gives (stages 5-7 are functions of it). A random model's maps are nearly
    flat, so min-max scaling turns float rounding in the larger batch (1e-6 in the features) into
    up to 1e-3 in the prior; another row's prior would differ by tenths."""
    other = np.ascontiguousarray(picture[:, ::-1])
    texts = [["the red disc"], ["the blue square"]]
    batched = family.segment_images([picture, other], texts)
    for image, words, got in zip([picture, other], texts, batched):
        family.set_image(image)
        alone = family.segment_batch(words)
        for a, b in zip(alone, got):
            np.testing.assert_allclose(b.features, a.features, atol=1e-4)
            np.testing.assert_allclose(b.prior_work, a.prior_work, atol=5e-3)


def test_expression_changes_the_forward(family, picture):
    family.set_image(picture)
    forward = family.forward(["the red disc", "a blue square"], prior_source="attention")
    name = forward.plan.cross_layers[0]
    assert not torch.allclose(forward.store.cross[name][0], forward.store.cross[name][1])


def test_paper_preset_runs(family, picture):
    from napari_editseg import PAPER

    family.set_image(picture)
    result = family.segment("the red disc", **PAPER)
    assert result.settings.prior_source == "attention" and result.mask.shape == picture.shape[:2]
