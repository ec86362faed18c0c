"""The predictor API on tiny random-weight models: real UNet forwards, nothing mocked."""

import numpy as np
import pytest
import torch

from napari_editseg import EditSegmenter, Segmentation, SegmentationSettings
from napari_editseg.core.settings import PAPER


def test_segment_returns_full_size_maps_and_what_was_encoded(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("  The RED   disc ")
    assert isinstance(result, Segmentation)
    assert result.mask.shape == picture.shape[:2] and result.mask.dtype == bool
    for name in ("scores", "prior"):
        m = getattr(result, name)
        assert m.shape == picture.shape[:2] and m.dtype == np.float32
        assert 0.0 <= m.min() and m.max() <= 1.0
    assert result.instruction == "make the the red disc red"
    assert result.expression == "the red disc" and result.truncated is False
    assert isinstance(result.settings, SegmentationSettings)
    assert result.settings.prior_resolutions == (4, 8) and result.settings.timestep == 999  # "auto" resolved
    assert {"encode_image", "encode_text", "denoiser", "prior", "discriminate", "mask"} <= set(result.timings)
    assert not (result.mask & (result.scores < 0.5)).any()  # keep="peak" may drop parts, never adds
    assert 0.0 <= result.confidence <= 1.0


def test_same_inputs_same_result_and_the_seed_matters(segmenter, picture):
    segmenter.set_image(picture)
    a, b = segmenter.segment("the disc"), segmenter.segment("the disc")
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.scores, b.scores)
    c = segmenter.segment("the disc", seed=1)
    assert not np.array_equal(a.prior, c.prior)


@pytest.mark.parametrize("preset", [PAPER, {}], ids=["paper", "defaults"])
def test_one_unet_forward_equals_the_first_step_of_the_diffusers_pipeline(segmenter, tiny_model_dir, picture,
                                                                         preset):
    """The paper-exact path, and the defaults (whose batch also holds the baseline-text row)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from napari_editseg.core.image import model_size, to_model_input, to_rgb_float

    segmenter.set_image(picture)
    forward = segmenter.forward(["the red disc"], early_exit=False, **preset)
    ours = forward.noise_pred
    assert ours is not None

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    first_call = []
    handle = pipe.unet.register_forward_hook(lambda m, i, o: first_call.append(o[0]) if not first_call else None)
    size = model_size(*picture.shape[:2], 32, 16, True)
    pipe(
        prompt=forward.instructions[0].text, image=to_model_input(to_rgb_float(picture), size),
        num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="latent",
    )
    handle.remove()
    assert ours.shape == first_call[0].shape
    torch.testing.assert_close(ours, first_call[0], rtol=1e-4, atol=1e-5)


def test_early_exit_skips_every_later_block(segmenter, picture, count_calls):
    unet = segmenter.model.unet
    segmenter.set_image(picture)
    with count_calls(unet.up_blocks[2]) as last_needed, count_calls(unet.up_blocks[3]) as later, \
            count_calls(unet.conv_out) as out:
        forward = segmenter.forward(["the disc"])
    assert forward.noise_pred is None
    # the expression's forward and the relevance baseline's (in a forward of its own), both stopping early
    assert (last_needed.calls, later.calls, out.calls) == (2, 0, 0)
    with count_calls(unet.up_blocks[3]) as later, count_calls(unet.conv_out) as out:
        segmenter.forward(["the disc"], early_exit=False)
    assert (later.calls, out.calls) == (1, 1)
    # features from up_blocks.1 only: the forward can stop one block earlier
    with count_calls(unet.up_blocks[2]) as skipped:
        segmenter.forward(["the disc"], feature_blocks=("up_blocks.1",), prior_resolutions=(4,),
                          affinity_resolution=4)
    assert skipped.calls == 0


def test_processors_and_hooks_are_removed_after_each_call(segmenter, picture):
    unet = segmenter.model.unet
    before = dict(unet.attn_processors)

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())

    n_hooks = hooks()
    segmenter.set_image(picture)
    segmenter.segment("the disc")
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert hooks() == n_hooks
    with pytest.raises(ValueError):
        segmenter.segment_batch(["ok", "   "])  # fails before the forward
    assert all(unet.attn_processors[k] is before[k] for k in before) and hooks() == n_hooks


def test_captured_maps_have_the_documented_shapes_and_rows_sum_to_one(segmenter, picture):
    picture = picture[:, :48]  # 45x48 -> model input 32x32, latent 16x16 (VAE factor 2)
    segmenter.set_image(picture)
    forward = segmenter.forward(["a", "the blue square"])
    h, w = forward.latent_grid
    assert (h, w) == (16, 16)
    store = forward.store
    assert set(store.cross) == set(forward.plan.cross_layers)
    for name, level in zip(forward.plan.cross_layers, forward.plan.cross_levels):
        probs = store.cross[name]
        assert probs.shape == (2, (h >> level) * (w >> level), 77)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    affinity = store.affinity
    n = (h >> 1) * (w >> 1)
    assert affinity.shape == (2, n, n) and store.self_count == len(forward.plan.self_layers)
    torch.testing.assert_close(affinity.sum(-1), torch.ones(2, n))
    assert store.features["up_blocks.1"].shape[-2:] == (h >> 1, w >> 1)
    assert store.features["up_blocks.2"].shape[-2:] == (h, w)


def test_self_attention_in_head_chunks_equals_one_head_at_a_time(segmenter, picture, monkeypatch):
    from napari_editseg.core import capture

    segmenter.set_image(picture)
    together = segmenter.forward(["the disc"], early_exit=False)
    monkeypatch.setattr(capture, "SELF_ATTENTION_BUDGET", 1)  # forces one head per chunk
    alone = segmenter.forward(["the disc"], early_exit=False)
    torch.testing.assert_close(together.store.affinity, alone.store.affinity)
    torch.testing.assert_close(together.noise_pred, alone.noise_pred)


def test_the_image_is_encoded_once_for_many_expressions(segmenter, picture, count_calls):
    with count_calls(segmenter.model.vae.encoder) as encodes, count_calls(segmenter.model.unet) as forwards:
        segmenter.set_image(picture)
        for expression in ("the disc", "the square", "the background"):
            segmenter.segment(expression)
        segmenter.segment_batch(["the disc", "the square"])
    assert encodes.calls == 1
    assert forwards.calls == 5  # three single forwards, one batched forward, and the baseline's forward once
    with count_calls(segmenter.model.vae.encoder) as encodes:
        segmenter.segment("the disc", resolution=64)  # another size needs its own latents, once
        segmenter.segment("the disc", resolution=64)
    assert encodes.calls == 1


def test_a_batch_gives_what_single_calls_give(segmenter, picture):
    segmenter.set_image(picture)
    expressions = ["the disc", "the blue square", "x"]
    batch = segmenter.forward(expressions)
    results = segmenter.segment_batch(expressions)
    for i, expression in enumerate(expressions):
        single = segmenter.forward([expression])
        for name in single.store.cross:
            torch.testing.assert_close(batch.store.cross[name][i], single.store.cross[name][0], atol=1e-6, rtol=1e-4)
        for name in single.store.features:
            torch.testing.assert_close(batch.store.features[name][i], single.store.features[name][0],
                                       atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.store.affinity[i], single.store.affinity[0], atol=1e-6, rtol=1e-4)
        # downstream, quantile thresholds may flip a few boundary pixels on rounding noise
        alone = segmenter.segment(expression)
        assert results[i].instruction == alone.instruction
        np.testing.assert_allclose(results[i].prior, alone.prior, atol=5e-3)
    for paper, alone in zip(segmenter.segment_batch(expressions, **PAPER),
                            [segmenter.segment(e, **PAPER) for e in expressions]):
        assert np.mean(paper.mask == alone.mask) > 0.98


def test_refine_needs_no_unet_forward(segmenter, picture, count_calls):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc", keep="all")  # every pixel above the threshold
    with count_calls(segmenter.model.unet) as forwards, count_calls(segmenter.model.vae.encoder) as encodes:
        looser = segmenter.refine(result, mask_threshold=0.2)
        stricter = segmenter.refine(result, mask_threshold=0.8)
        segmenter.refine(result, fg_quantile=0.8, bg_quantile=0.3, temperature=5.0, bg_prototypes=2, keep="peak")
        clicked = segmenter.refine(result, positive=[(40, 5)], negative=[(2, 58)])
    assert forwards.calls == 0 and encodes.calls == 0
    assert looser.mask.sum() >= result.mask.sum() >= stricter.mask.sum()
    assert np.array_equal(looser.mask, result.scores >= 0.2)
    assert clicked.positive == ((40, 5),) and clicked.negative == ((2, 58),)
    assert clicked.fg_prototypes.shape[0] == result.fg_prototypes.shape[0] + 1
    assert clicked.bg_prototypes.shape[0] == result.bg_prototypes.shape[0] + 1
    assert not np.array_equal(clicked.scores, result.scores)
    assert np.array_equal(clicked.prior, result.prior)
    again = segmenter.refine(clicked, positive=[(10, 10)])  # clicks accumulate
    assert len(again.positive) == 2 and again.fg_prototypes.shape[0] == 3


@pytest.mark.parametrize("overrides", [{"edge_refine": "none", "keep": "all"}, {}], ids=["grid", "defaults"])
def test_a_positive_click_raises_the_score_where_it_lands(segmenter, picture, overrides):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc", **overrides)
    row, col = np.unravel_index(np.argmin(result.scores), result.scores.shape)
    clicked = segmenter.refine(result, positive=[(row, col)])
    assert clicked.scores[row, col] > result.scores[row, col] + 0.2
    if overrides:  # on the work grid the clicked cell's own feature is a foreground prototype
        assert clicked.mask[row, col]


def test_refine_refuses_settings_that_need_a_new_forward(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc")
    with pytest.raises(ValueError, match="call segment"):
        segmenter.refine(result, timestep=500)
    with pytest.raises(ValueError, match="unknown setting"):
        segmenter.refine(result, threshold=0.3)
    with pytest.raises(ValueError, match="outside the image"):
        segmenter.refine(result, positive=[(45, 0)])


def test_the_timestep_changes_the_result(segmenter, picture):
    segmenter.set_image(picture)
    early, late = segmenter.segment("the disc"), segmenter.segment("the disc", timestep=100)
    assert not np.allclose(early.prior, late.prior)


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8),  # grey
        np.random.default_rng(0).integers(0, 65535, (30, 40, 3), dtype=np.uint16),
        np.random.default_rng(0).random((30, 40, 4), dtype=np.float32),  # RGBA float
        np.random.default_rng(0).normal(100, 50, (30, 40)),  # float outside [0, 1]
        np.ones((1, 1, 3), np.uint8),  # a single pixel
        np.zeros((20, 30), bool),
    ],
    ids=["grey-uint8", "rgb-uint16", "rgba-float", "float-any-range", "1x1", "bool"],
)
def test_image_kinds_give_a_mask_of_their_own_size(segmenter, image):
    segmenter.set_image(image)
    result = segmenter.segment("the thing")
    assert result.mask.shape == image.shape[:2]


def test_a_large_image_is_handled_at_its_own_size(segmenter):
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[1000:2000, 500:1500] = 255
    segmenter.set_image(image)
    result = segmenter.segment("the white square")
    assert result.mask.shape == (3000, 4000)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((2, 3, 4, 5, 6)), "is not H×W"),
        (np.zeros((10, 10, 2)), "is not H×W"),
        (np.full((10, 10), np.nan), "NaN"),
        (np.zeros((10, 10), np.complex64), "dtype complex64 is not supported"),
        (np.array([["a", "b"]]), "is not supported"),
        (np.zeros((0, 10)), "empty"),
    ],
)
def test_bad_images_are_refused_with_a_clear_error(segmenter, image, message, picture):
    segmenter.set_image(picture)
    with pytest.raises(ValueError, match=message):
        segmenter.set_image(image)
    with pytest.raises(ValueError, match="set_image"):  # the earlier picture is not silently reused
        segmenter.segment("the disc")


def test_bad_expressions(segmenter, picture):
    segmenter.set_image(picture)
    for expression in ("", "   \n\t", None):
        with pytest.raises(ValueError, match="expression"):
            segmenter.segment(expression)
    with pytest.raises(ValueError, match="list"):
        segmenter.segment_batch("the disc")


def test_a_long_expression_is_truncated_and_says_so(segmenter, picture):
    segmenter.set_image(picture)
    short = segmenter.segment("the disc")
    assert not short.truncated
    long = segmenter.segment("the red disc on the left of the blue square " * 4)  # 180 characters
    assert long.truncated
    assert long.mask.shape == picture.shape[:2]


def test_segment_before_set_image_says_what_to_do(tiny_model_dir):
    fresh = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu")
    with pytest.raises(ValueError, match="set_image"):
        fresh.segment("the disc")


def test_expression_token_positions_skip_template_and_special_tokens(segmenter):
    from napari_editseg.core.instruction import build_instruction

    tok = segmenter.model.tokenizer
    ins = build_instruction("dog", "make the {} red", tok, 77)
    ids = tok(ins.text, padding="max_length", max_length=77, truncation=True).input_ids
    assert "".join(tok.convert_ids_to_tokens([ids[p] for p in ins.token_positions])) == "dog</w>"
    ins = build_instruction("dog", "{} red", tok, 77)
    assert ins.token_positions == (1, 2, 3)  # right after the start token
    cut = build_instruction("dog " * 40, "make the {} red", tok, 77)
    assert cut.truncated and max(cut.token_positions) == 75  # position 76 is the end token


def test_segment_images_batches_images_of_one_size_and_matches_one_at_a_time(segmenter, picture, count_calls):
    same = np.ascontiguousarray(picture[::-1])  # the picture's size: one batch with it
    other = np.ascontiguousarray(np.concatenate([picture, picture], axis=1))  # another input size: its own batch
    images = [picture, same, other]
    expressions = [["the red disc", "the blue square"], ["the red disc"], ["the blue square"]]
    segmenter.set_image(other)
    with count_calls(segmenter.model.vae.encoder) as encodes, count_calls(segmenter.model.unet) as forwards:
        batched = segmenter.segment_images(images, expressions)
    # per input size, not per image: one encode, one forward of the instructions, one of the baselines
    assert (encodes.calls, forwards.calls) == (2, 4)
    assert segmenter.image_shape == other.shape[:2]  # the set image is untouched
    for image, texts, results in zip(images, expressions, batched):
        segmenter.set_image(image)
        alone = segmenter.segment_batch(texts)
        assert [r.expression for r in results] == texts
        for a, b in zip(alone, results):
            assert a.mask.shape == b.mask.shape == image.shape[:2]
            np.testing.assert_allclose(b.features, a.features, atol=1e-4)
            np.testing.assert_allclose(b.prior_work, a.prior_work, atol=2e-3)
    with pytest.raises(ValueError, match="one list of expressions per image"):
        segmenter.segment_images([picture], [["a"], ["b"]])
