"""Every setting reaches its stage: changing it changes what that stage produces, on real
forwards of the tiny model (or, for the mask's shape rules, on planted scores). A setting
that could be dropped on the way to its stage fails here."""

from dataclasses import replace

import numpy as np
import pytest

from napari_editseg.core.settings import SETTING_NAMES

ATTENTION = {"prior_source": "attention"}  # the token and layer settings act on the attention source only
GUIDED = {"edge_refine": "guided"}
QUANTILE = {"fg_select": "quantile"}

# name: (value a, value b, settings both runs share, what must differ, refine-only?)
EFFECTS = {
    "resolution": (32, 64, {}, "prior_work", False),
    "keep_aspect": (True, False, {"resolution": 64}, "prior_work", False),
    "size_multiple": (16, 32, {"resolution": 64}, "prior_work", False),
    "tiling": ("off", "always", {}, "scores", False),  # auto tiles only images far above 45x60
    "tile_overlap": (0.0, 0.5, {"tiling": "always"}, "scores", False),
    "tile_size": (16, 32, {"tiling": "always"}, "scores", False),
    "instruction_template": ("make the {} red", "turn the {} into gold", {}, "prior", False),
    "timestep": (999, 400, {}, "prior", False),
    "seed": (0, 1, {}, "prior", False),
    "noise_samples": (1, 2, ATTENTION, "prior", False),  # averaged draws, not the first one
    "prior_resolutions": ((4, 8), (8,), ATTENTION, "prior", False),
    "prior_layers": ("all", "decoder", ATTENTION, "prior", False),
    "prior_source": ("attention", "relevance", {}, "prior", False),
    "relevance_from": ("noise", "features", {}, "prior", False),
    "relevance_baseline": ("empty", "template", {}, "prior", False),
    "token_norm": ("none", "softmax", ATTENTION, "prior", False),
    "token_scale": (1.0, 100.0, {**ATTENTION, "token_norm": "softmax"}, "prior", False),
    "token_reduce": ("mean", "max", ATTENTION, "prior", False),
    "affinity_resolution": (4, 8, {}, "prior", False),
    "propagation_steps": (0, 2, {}, "prior", False),
    "restart": (0.0, 0.5, {"prior_pick": "fixed"}, "prior", False),
    "restart_share": (1.0, 0.2, {"restart": 0.5, "prior_pick": "fixed"}, "prior", False),
    "smooth_steps": (0, 2, {"restart": 0.5, "prior_pick": "fixed"}, "prior", False),
    "prior_pick": ("fixed", "contrast", {"restart": 0.5, "smooth_steps": 1}, "prior", False),
    "peak_links": (0.125, 0.5, {}, "peak_work", False),  # the walk keep=peak reads (test_anchoring: the part)
    "decoys": (0, 4, {}, "confidence", False),
    "feature_blocks": (("up_blocks.1",), ("up_blocks.1", "up_blocks.2"), {}, "features", False),
    "work_resolution": (8, 16, {}, "prior_work", False),
    "fg_select": ("quantile", "otsu", {}, "fg_prototypes", True),
    "fg_quantile": (0.7, 0.95, QUANTILE, "fg_prototypes", True),
    "bg_quantile": (0.2, 0.5, {}, "bg_prototypes", True),
    "bg_prototypes": (1, 5, {}, "bg_prototypes", True),
    "temperature": (2.0, 10.0, {}, "scores", True),
    "mask_threshold": (0.3, 0.7, {"keep": "all"}, "mask", True),
    "edge_refine": ("none", "guided", {}, "scores", True),
    "edge_radius": (1.0, 3.0, GUIDED, "scores", True),
    "edge_eps": (1e-4, 1e-1, GUIDED, "scores", True),
    "min_confidence": (0.0, 1.0, {}, "found", True),
    "keep": ("all", "peak", {}, "mask", "planted"),
    "fill_holes": (False, True, {"keep": "all"}, "mask", "planted"),
    "instances": (False, True, {}, "mask", "planted"),  # keep=peak drops the second blob; instances keep it
    "instance_split": ("components", "watershed", {"instances": True}, "labels", "touching"),
    "split_depth": (0.1, 0.9, {"instances": True}, "labels", "touching"),
    "min_instance_size": (1, 5000, {"instances": True}, "labels", "touching"),
    "min_instance_score": (0.0, 1.0, {"instances": True}, "labels", "touching"),
    "granularity": (2, 8, {}, "labels", "everything"),  # segment_everything's feature clusters
    "exemplar_cue": ("features", "colour", {}, "prior", "exemplars"),  # segment_like's prior
    "exemplar_size": (0.0, 1.5, {"exemplar_colour": False}, "labels", "exemplars"),  # drops objects far from its size
    "exemplar_regions": (False, True, {"exemplar_size": 0}, "labels", "exemplars"),  # the right disc joins
    "exemplar_colour": (False, True, {"exemplar_size": 0}, "labels", "exemplars"),  # another colour is dropped
    # two clusters hold no region like the disc; a second clustering into 32 does
    "exemplar_granularity": (0, 32, {"exemplar_size": 0, "granularity": 2}, "labels", "exemplars"),
}


# Settings for diffusion transformers: their effects are tested on the tiny FLUX.1 Kontext model
# (tests/test_backbone_flux.py); a UNet refuses any value but the one it has (tested below).
TRANSFORMER_ONLY = {"attention_blocks": ("up_blocks.1",), "image_tokens": "reference"}


def test_the_table_names_every_setting():
    assert set(EFFECTS) | set(TRANSFORMER_ONLY) == set(SETTING_NAMES)
    assert not set(EFFECTS) & set(TRANSFORMER_ONLY)


@pytest.mark.parametrize("name", list(TRANSFORMER_ONLY))
def test_transformer_settings_are_refused_by_a_unet_in_one_line(segmenter, name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        segmenter.resolve_settings(**{name: TRANSFORMER_ONLY[name]})
    assert segmenter.resolve_settings(image_tokens="target").image_tokens == "target"


# Batches of other sizes round differently (about 1e-3 after min-max scaling): a setting that
# changes the batch must change its output by more than that.
MIN_CHANGE = {"noise_samples": 0.05, "prior_source": 0.05}


def differs(a, b, tolerance: float = 1e-5) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape != b.shape or np.abs(a.astype(float) - b.astype(float)).max() > tolerance
    return a != b


def planted(result):
    """Scores of two blobs, one holding a hole, with the prior's peak in the other: ``keep``
    decides whether the second blob stays, ``fill_holes`` whether the hole does."""
    h, w = result.prior_work.shape
    features = np.zeros_like(result.features)
    features[0] = 1.0  # background direction
    prior = np.zeros((h, w), np.float32)
    rows, cols = np.mgrid[:h, :w]
    ring = (np.abs(rows - h // 4) <= 3) & (np.abs(cols - w // 4) <= 3)
    ring &= ~((rows == h // 4) & (cols == w // 4))  # one cell of background inside: a hole
    blob = (np.abs(rows - 3 * h // 4) <= 2) & (np.abs(cols - 3 * w // 4) <= 2)
    for region, height in ((ring, 0.8), (blob, 1.0)):
        features[:, region] = 0.0
        features[1, region] = 1.0  # foreground direction
        prior[region] = height
    return replace(result, features=features, prior_work=prior, mask=np.zeros((8 * h, 8 * w), bool), guide=None,
                   prior_prototypes=None)


def touching(result):
    """Scores of two discs that overlap on the work grid (one connected mask with a neck), the
    prior on both: instance settings decide whether they are one object or two."""
    h, w = result.prior_work.shape
    rows, cols = np.mgrid[:h, :w] + 0.5
    radius = h / 4
    discs = [(rows - h / 2) ** 2 + (cols - c) ** 2 <= radius ** 2 for c in (w / 2 - radius, w / 2 + radius)]
    features = np.zeros_like(result.features)
    features[0] = 1.0
    region = discs[0] | discs[1]
    features[:, region] = 0.0
    features[1, region] = 1.0
    return replace(result, features=features, prior_work=region.astype(np.float32),
                   mask=np.zeros((8 * h, 8 * w), bool), guide=None, prior_prototypes=None)


@pytest.mark.parametrize("name", list(EFFECTS))
def test_each_setting_changes_what_its_stage_produces(segmenter, picture, name, count_calls):
    a, b, shared, output, refine_only = EFFECTS[name]
    segmenter.set_image(picture)
    if refine_only == "everything":
        first, second = (segmenter.segment_everything(**{**shared, name: v}) for v in (a, b))
    elif refine_only == "exemplars":
        twice = np.tile(picture, (1, 2, 1))  # two discs: the left one painted, the right one alike
        segmenter.set_image(twice)
        rows, cols = np.mgrid[:twice.shape[0], :twice.shape[1]]
        labels = ((rows - 20) ** 2 + (cols - 18) ** 2 < 100).astype(np.int32)
        first, second = (segmenter.segment_like(labels, [1], **{**shared, name: v}) for v in (a, b))
    elif refine_only:
        base = segmenter.segment("the disc", edge_refine="none")
        if refine_only in ("planted", "touching"):
            base = (planted if refine_only == "planted" else touching)(base)
        with count_calls(segmenter.model.unet) as forwards:
            first, second = (segmenter.refine(base, **{"edge_refine": "none", **shared, name: v}) for v in (a, b))
        assert forwards.calls == 0
    else:
        first, second = (segmenter.segment("the disc", **{**shared, name: v}) for v in (a, b))
        assert (getattr(first.settings, name), getattr(second.settings, name)) == (a, b)
    assert differs(getattr(first, output), getattr(second, output), MIN_CHANGE.get(name, 1e-5)), \
        f"{name} did not change {output}"
