"""Where to look (method step 5): prior sources, token handling and the confidence, first on
planted structure, then through real forwards of the tiny model."""

import numpy as np
import pytest
import torch

from napari_editseg.core.image import resize
from napari_editseg.core.prior import combine_sources, expression_attention, peak_dominance, token_maps
from napari_editseg.core.relevance import relevance_map, robust_clip

GRID = (16, 16)
SOT, WORDS, EOT, PADDING = 0, (1, 2, 3, 4), 5, (6, 7)  # "make the <dog> red" as 8 token columns
EXPRESSION = (3,)
TEMPLATE = (1, 2, 4)


def blob(rows, cols, grid=GRID):
    m = torch.zeros(grid)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return m


A = blob((2, 7), (2, 7))
B = blob((9, 14), (9, 14))


def probabilities(columns: dict) -> torch.Tensor:
    """N×8 rows of attention: each column's weight per position, normalised to sum to one."""
    weights = torch.full((GRID[0] * GRID[1], 8), 0.01)
    for column, weight in columns.items():
        weights[:, column] += weight.reshape(-1)
    return weights / weights.sum(dim=1, keepdim=True)


def test_softmax_over_word_tokens_undoes_a_padding_sink():
    # Over A the padding takes nearly all the mass, so the expression's raw probability there
    # is small although it is the strongest WORD; over B the words share the row evenly.
    probs = probabilities({PADDING[0]: 40.0 * A, 3: 1.0 * A + 0.3 * B, 1: 0.3 * B, 2: 0.3 * B, 4: 0.3 * B})
    raw = expression_attention([probs], [GRID], EXPRESSION, "mean", GRID, WORDS, "none")
    renormed = expression_attention([probs], [GRID], EXPRESSION, "mean", GRID, WORDS, "softmax", 100.0)
    assert raw[B > 0].mean() > raw[A > 0].mean()
    assert renormed[A > 0].mean() > renormed[B > 0].mean() + 0.3
    # the scale matters: at scale 1 the re-softmax over near-zero probabilities is nearly flat
    flat = token_maps(probs, EXPRESSION, WORDS, "softmax", 1.0)
    assert float(flat.max() - flat.min()) < 0.02
    sharp = token_maps(probs, EXPRESSION, WORDS, "softmax", 100.0)
    assert float(sharp.max() - sharp.min()) > 0.2


def test_contrast_removes_what_every_word_of_the_instruction_looks_at():
    # every word looks at A (where an edit would go); only the expression also looks at B, where
    # the start token takes most of the row
    probs = probabilities({**{t: 1.0 * A for t in TEMPLATE}, 3: 3.0 * A + 0.8 * B, SOT: 3.0 * B})
    none = expression_attention([probs], [GRID], EXPRESSION, "mean", GRID, WORDS, "none")
    contrast = expression_attention([probs], [GRID], EXPRESSION, "mean", GRID, WORDS, "contrast")
    assert none[A > 0].mean() > none[B > 0].mean()
    assert contrast[B > 0].mean() > contrast[A > 0].mean() + 0.5
    with pytest.raises(ValueError, match="template words"):
        expression_attention([probs], [GRID], EXPRESSION, "mean", GRID, EXPRESSION, "contrast")


def test_relevance_is_where_the_text_changes_the_output_and_an_outlier_does_not_flatten_it():
    g = torch.Generator().manual_seed(0)
    without = torch.randn(3, 4, *GRID, generator=g)
    with_text = without + 0.5 * A + 0.02 * torch.randn(3, 4, *GRID, generator=g)
    with_text[:, :, 15, 0] += 200.0  # one extreme position
    rel = relevance_map(with_text, without)
    assert rel.shape == GRID and float(rel.min()) == 0.0 and float(rel.max()) == 1.0
    # above the fence everything is 1: the region comes out flat-topped, clear of the rest
    assert rel[A > 0].min() == 1.0 and rel[A > 0].mean() > rel[(A == 0) & (B == 0)].mean() + 0.4
    unclipped = (with_text - without).abs().sum(dim=1).mean(dim=0)
    assert (unclipped / unclipped.max())[A > 0].mean() < 0.1  # without the clip, A would be nearly zero
    x = torch.arange(100.0)
    x[-1] = 1000.0  # Q1 = 24.75, Q3 = 74.25: the fence is 74.25 + 1.5 * 49.5
    assert float(robust_clip(x).max()) == pytest.approx(148.5) and float(robust_clip(x)[-2]) == 98.0


def test_fused_is_high_only_where_both_sources_agree():
    attention, relevance = A + B, A + blob((0, 2), (12, 16))
    fused = combine_sources(attention, relevance, "fused")
    assert fused[A > 0].min() == 1.0 and fused[B > 0].max() == 0.0
    assert torch.equal(combine_sources(attention, relevance, "attention"), attention)
    assert torch.equal(combine_sources(attention, relevance, "relevance"), relevance)


def test_peak_dominance_says_whether_one_place_or_two_compete():
    one = resize(A, GRID) + 0.1 * B
    two = A + 0.95 * B
    assert peak_dominance(one) > 0.85
    assert peak_dominance(two) < 0.1
    assert peak_dominance(torch.zeros(GRID)) == 0.0


# -- through real forwards of the tiny model ---------------------------------------------------
def test_relevance_from_noise_runs_the_whole_unet_and_from_features_stops_early(segmenter, picture, count_calls):
    unet = segmenter.model.unet
    segmenter.set_image(picture)
    with count_calls(unet.up_blocks[3]) as last, count_calls(unet) as forwards:
        from_noise = segmenter.segment("the disc", prior_source="relevance", relevance_from="noise")
    assert (forwards.calls, last.calls) == (2, 2)  # the instruction's forward and the baseline text's, both whole
    with count_calls(unet.up_blocks[3]) as last:
        from_features = segmenter.segment("the disc", prior_source="relevance", relevance_from="features")
    assert last.calls == 0
    attention = segmenter.segment("the disc", prior_source="attention")
    for a, b in ((from_noise, attention), (from_features, attention), (from_noise, from_features)):
        assert not np.allclose(a.prior, b.prior)


def test_the_relevance_rows_are_the_instruction_against_its_baseline(segmenter, picture):
    """The relevance equals the map computed by hand from two separate full forwards."""
    from napari_editseg.core.relevance import relevance_map

    segmenter.set_image(picture)
    forward = segmenter.forward(["the disc"], prior_source="relevance", relevance_from="noise", noise_samples=2,
                                relevance_baseline="template")
    own = segmenter.forward(["the disc"], early_exit=False, noise_samples=2).noise_pred
    # the baseline row alone: the template without the expression ("make the red")
    by_hand = segmenter.forward(["red"], early_exit=False, noise_samples=2, instruction_template="make the {}")
    expected = relevance_map(own, by_hand.noise_pred)
    torch.testing.assert_close(forward.relevance[0], expected, atol=1e-4, rtol=1e-3)
    assert forward.noise_pred.shape[0] == 2  # the baseline rows are not returned


@pytest.mark.parametrize("name, values", [
    ("relevance_baseline", ("empty", "template")),
    ("noise_samples", (1, 3)),
    ("token_norm", ("none", "softmax")),
    ("token_scale", (1.0, 100.0)),
    ("prior_source", ("relevance", "fused")),
])
def test_each_prior_setting_changes_the_prior(segmenter, picture, name, values):
    segmenter.set_image(picture)
    base = {"prior_source": "relevance"} if name.startswith("relevance") or name == "noise_samples" else {}
    if name.startswith("token"):
        base = {"token_norm": "softmax", "prior_source": "attention"}
    a, b = (segmenter.segment("the disc", **{**base, name: v}) for v in values)
    assert not np.allclose(a.prior, b.prior)


def test_token_norm_contrast_needs_template_words(segmenter, picture):
    segmenter.set_image(picture)
    assert not np.allclose(segmenter.segment("the disc", token_norm="contrast", prior_source="attention").prior,
                           segmenter.segment("the disc", prior_source="attention").prior)
    with pytest.raises(ValueError, match="template words"):
        segmenter.segment("the disc", token_norm="contrast", instruction_template="{}")


def test_a_batch_with_relevance_gives_what_single_calls_give(segmenter, picture):
    segmenter.set_image(picture)
    settings = {"prior_source": "fused", "noise_samples": 2}
    batch = segmenter.segment_batch(["the disc", "the blue square"], **settings)
    for result in batch:
        alone = segmenter.segment(result.expression, **settings)
        # batched matmuls round differently; min-max scaling amplifies it a little
        np.testing.assert_allclose(result.prior, alone.prior, atol=5e-3)
        assert result.confidence == pytest.approx(alone.confidence, abs=1e-2)


def test_confidence_and_min_confidence(segmenter, picture, count_calls):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc")
    assert 0.0 <= result.confidence <= 1.0 and result.found  # min_confidence defaults to 0
    with count_calls(segmenter.model.unet) as forwards:
        strict = segmenter.refine(result, min_confidence=min(1.0, result.confidence + 0.01))
    assert forwards.calls == 0 and not strict.found and np.array_equal(strict.mask, result.mask)


def test_fused_is_the_geometric_mean_of_the_two_sources():
    attention, relevance = A + 0.25 * B, A + B  # over B: attention a quarter, relevance full
    fused = combine_sources(attention, relevance, "fused")
    assert float(fused[B > 0].mean()) == pytest.approx(0.5)  # sqrt(0.25 * 1), not 0.25
