import pytest
import torch

from napari_editseg import SegmentationSettings
from napari_editseg.core.backbones.unet import UNetLayout
from napari_editseg.core.settings import SETTING_NAMES, parse_setting

METHOD_MD_NAMES = (
    "resolution keep_aspect instruction_template timestep seed noise_samples prior_resolutions token_reduce "
    "affinity_resolution propagation_steps feature_blocks work_resolution fg_quantile bg_quantile bg_prototypes "
    "temperature mask_threshold keep fill_holes"
).split()


def test_every_setting_of_the_method_exists_and_the_paper_preset_restores_the_first_defaults():
    s = SegmentationSettings.paper()
    assert set(METHOD_MD_NAMES) <= set(SETTING_NAMES)
    assert (s.keep_aspect, s.instruction_template, s.seed, s.noise_samples) == (True, "make the {} red", 0, 1)
    assert (s.token_reduce, s.propagation_steps, s.fg_quantile, s.bg_quantile) == ("mean", 2, 0.9, 0.5)
    assert (s.bg_prototypes, s.temperature, s.mask_threshold, s.keep, s.fill_holes) == (1, 10.0, 0.5, "all", False)
    assert (s.prior_source, s.token_norm, s.fg_select, s.edge_refine) == ("attention", "none", "quantile", "none")
    assert SegmentationSettings.paper(keep="peak").keep == "peak"


def test_the_defaults_measured_on_the_shapes_world():
    # docs/method.md, "Defaults and the evidence": each differs from the paper preset on evidence
    s = SegmentationSettings()
    assert (s.prior_source, s.relevance_from, s.relevance_baseline, s.token_norm) == (
        "relevance", "features", "template", "none")
    assert (s.fg_select, s.bg_prototypes, s.edge_refine, s.edge_radius, s.edge_eps, s.keep) == (
        "both", 5, "guided", 2.0, 1e-3, "peak")
    assert s.min_confidence == 0.0


def test_unknown_setting_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown setting 'mask_treshold'.*mask_threshold"):
        SegmentationSettings().replace(mask_treshold=0.3)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mask_threshold=0.3", ("mask_threshold", 0.3)),
        ("prior_resolutions=16,32", ("prior_resolutions", (16, 32))),
        ("feature_blocks=up_blocks.1, up_blocks.2", ("feature_blocks", ("up_blocks.1", "up_blocks.2"))),
        ("keep_aspect=false", ("keep_aspect", False)),
        ("resolution=auto", ("resolution", "auto")),
        ("keep=peak", ("keep", "peak")),
    ],
)
def test_settings_parse_from_command_line_text(text, expected):
    assert parse_setting(text) == expected
    SegmentationSettings().replace(**dict([expected]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mask_threshold": 1.5}, "must lie in"),
        ({"temperature": 0}, "must be > 0"),
        ({"keep": "largest"}, "expected one of all, peak"),
        ({"instruction_template": "make it red"}, "exactly one"),
        ({"noise_samples": 0}, r"must lie in \[1, 64\]"),
        ({"resolution": "big"}, "not a number"),
        ({"prior_resolutions": ()}, "one or more"),
        ({"keep_aspect": "maybe"}, "true/false"),
        ({"prior_source": "clip"}, "expected one of attention, relevance, fused"),
        ({"edge_refine": "crf"}, "expected one of none, guided"),
        ({"edge_radius": 0}, "must be > 0"),
        ({"token_scale": -1}, "must be > 0"),
        ({"min_confidence": 2}, "must lie in"),
        ({"fg_select": "top"}, "expected one of quantile, otsu, peak, both"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        SegmentationSettings().replace(**overrides)


def instruct_pix2pix_layout() -> UNetLayout:
    """The published InstructPix2Pix UNet config, built on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=8, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    return UNetLayout(unet, vae_factor=8)


def test_auto_settings_resolve_to_the_method_defaults_on_instruct_pix2pix():
    layout = instruct_pix2pix_layout()
    s = layout.resolve(SegmentationSettings())
    assert s.resolution == 512 and s.size_multiple == 64 and s.work_resolution == 64
    assert s.prior_resolutions == (16, 32) and s.affinity_resolution == 32
    assert s.feature_blocks == ("up_blocks.1", "up_blocks.2")
    plan = layout.plan(s)
    assert plan.stop_after == "up_blocks.2"  # up_blocks.3 (64x64 attention) never runs
    assert set(plan.cross_levels) == {1, 2}
    assert all(".attn2" in n for n in plan.cross_layers) and all(".attn1" in n for n in plan.self_layers)
    # 16x16 attention lives in down_blocks.2 and up_blocks.1, 32x32 in down_blocks.1 and up_blocks.2
    assert {UNetLayout.block_of(n) for n in plan.cross_layers} == {
        "down_blocks.1", "down_blocks.2", "up_blocks.1", "up_blocks.2"}


def test_prior_layers_decoder_keeps_only_the_up_block_cross_attention():
    layout = instruct_pix2pix_layout()
    s = layout.resolve(SegmentationSettings(prior_layers="decoder"))
    plan = layout.plan(s)
    assert {UNetLayout.block_of(n) for n in plan.cross_layers} == {"up_blocks.1", "up_blocks.2"}
    assert plan.stop_after == "up_blocks.2" and s.prior_resolutions == (16, 32)
    with pytest.raises(ValueError, match="no decoder cross-attention layer works at latent sides 8"):
        layout.resolve(SegmentationSettings(prior_layers="decoder", prior_resolutions=(8,)))
    with pytest.raises(ValueError, match="prior_layers.*expected one of all, decoder"):
        SegmentationSettings(prior_layers="encoder")


def test_auto_settings_pick_the_analogous_layers_on_a_three_level_sdxl_style_unet():
    """SDXL's published block layout (3 levels, a plain finest level, cross-attention in the two
    coarser ones, 128 latents), as the instruction-editing SDXL variants use it."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=8, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        )
    layout = UNetLayout(unet, vae_factor=8)
    s = layout.resolve(SegmentationSettings())
    # 128 x 8 = 1024; sides a multiple of 8 x 2^2; latent/4 and latent/2 carry cross-attention
    assert (s.resolution, s.size_multiple, s.work_resolution) == (1024, 32, 128)
    assert s.prior_resolutions == (32, 64) and s.affinity_resolution == 64
    assert s.feature_blocks == ("up_blocks.0", "up_blocks.1")  # the two up-blocks before the last
    assert layout.plan(s).stop_after == "up_blocks.1"  # the plain 128x128 up-block never runs


def test_auto_follows_an_explicit_resolution_and_explicit_values_win():
    layout = instruct_pix2pix_layout()
    s = layout.resolve(SegmentationSettings(resolution=768))
    assert s.prior_resolutions == (24, 48) and s.affinity_resolution == 48 and s.work_resolution == 96
    s = layout.resolve(SegmentationSettings(prior_resolutions=(32,), feature_blocks=("up_blocks.1",)))
    assert s.prior_resolutions == (32,) and s.feature_blocks == ("up_blocks.1",)
    assert layout.plan(s).stop_after == "up_blocks.2"  # 32x32 cross-attention is in up_blocks.2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prior_resolutions": (20,)}, "no attention layer works at latent side 20"),
        ({"affinity_resolution": 4}, "available: 8, 16, 32, 64"),
        ({"feature_blocks": ("up_blocks.9",)}, "not a block of this UNet"),
        ({"size_multiple": 32}, "multiple of 64"),
    ],
)
def test_settings_this_unet_cannot_take_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        instruct_pix2pix_layout().resolve(SegmentationSettings(**overrides))


# -- each setting declared once: validation, parsing and help all follow the declaration -----------
def test_every_declared_range_and_choice_is_enforced_and_round_trips_through_text():
    from napari_editseg.core.settings import SETTING_SPECS

    for name, spec in SETTING_SPECS.items():
        spec.check(spec.default)
        if spec.default != "auto" and spec.kind != "text":
            text = ",".join(map(str, spec.default)) if isinstance(spec.default, tuple) else str(spec.default)
            assert parse_setting(f"{name}={text}") == (name, spec.default), name
        if spec.minimum is not None:
            below = spec.minimum if spec.above else spec.minimum - (1 if spec.kind in ("int", "sides") else 1e-6)
            bad = (below,) if spec.kind == "sides" else below
            with pytest.raises(ValueError, match=f"setting '{name}'"):
                spec.check(bad)
        if spec.maximum is not None:
            above = spec.maximum + (1 if spec.kind in ("int", "sides") else 1e-6)
            with pytest.raises(ValueError, match=f"setting '{name}'"):
                spec.check((above,) if spec.kind == "sides" else above)
        if spec.kind == "choice":
            with pytest.raises(ValueError, match="expected one of " + ", ".join(spec.choices)):
                spec.check("surely-not-a-choice")
    assert SETTING_SPECS["keep"].choices == ("all", "peak") and SETTING_SPECS["resolution"].auto
    assert SETTING_SPECS["fg_quantile"].describe() == "number in [0, 1]"
    assert SETTING_SPECS["temperature"].describe() == "number > 0"


def test_contradictory_quantiles_are_refused_with_one_line():
    with pytest.raises(ValueError, match="fg_quantile=0.4 and bg_quantile=0.5 contradict"):
        SegmentationSettings().replace(fg_quantile=0.4)
    with pytest.raises(ValueError, match="fg_quantile must lie above bg_quantile"):
        SegmentationSettings(fg_quantile=0.5, bg_quantile=0.5)
    assert SegmentationSettings().replace(fg_quantile=0.6, bg_quantile=0.55).bg_quantile == 0.55


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    import numpy as np

    s = SegmentationSettings().replace(mask_threshold=np.float32(0.25), seed=np.int64(7), keep_aspect=np.bool_(False),
                                       prior_resolutions=[np.int64(4), 8])
    assert (s.mask_threshold, s.seed, s.keep_aspect, s.prior_resolutions) == (0.25, 7, False, (4, 8))
    assert type(s.seed) is int and type(s.mask_threshold) is float


@pytest.mark.parametrize("overrides, message", [
    ({"seed": 2**32}, r"must lie in \[0, 4294967295\]"),  # the background k-means takes 32-bit seeds
    ({"temperature": float("inf")}, "finite"),
    ({"mask_threshold": float("nan")}, "finite"),
    ({"resolution": 10**6}, "must lie in"),
    ({"resolution": 512.0}, "expected an integer or 'auto'"),
])
def test_values_that_would_fail_later_are_refused_now(overrides, message):
    with pytest.raises(ValueError, match=message):
        SegmentationSettings().replace(**overrides)


def test_the_papers_command_line_in_the_docs_is_the_paper_preset():
    """The one-line `--set` form of the paper's method that README, usage.md and method.md print
    gives exactly the PAPER preset's settings (a default changed later must join it there too)."""
    import re
    from pathlib import Path

    from napari_editseg.core.settings import SegmentationSettings, parse_setting

    root = Path(__file__).resolve().parents[1]
    for doc in ("README.md", "docs/usage.md", "docs/method.md"):
        text = root.joinpath(doc).read_text()
        lines = (m.group(0) for m in re.finditer(r"(--set \S+=\S+ ?)+", text))
        line = next(line for line in lines if "prior_source=attention" in line)
        typed = dict(parse_setting(p) for p in re.findall(r"--set (\S+=[^\s`,]+)", line))
        assert SegmentationSettings().replace(**typed) == SegmentationSettings.paper(), doc
