"""Issue 21's settings for a prior that cannot wander off (``restart``) and a confidence that can
say "not here" (``decoys``): on planted graphs and effects first, then through real forwards."""

import numpy as np
import pytest
import torch

from napari_editseg.core.forward import decoy_ranks
from napari_editseg.core.instruction import Instruction, decoy_expressions
from napari_editseg.core.mask import score_contrast
from napari_editseg.core.prior import cut_links, propagate


def drifting_affinity(n: int = 12) -> torch.Tensor:
    """A chain where every position attends mostly to its right neighbour: powers of A carry any
    prior to the right, off where it started."""
    a = torch.zeros(n, n)
    for i in range(n):
        a[i, min(i + 1, n - 1)] += 0.8
        a[i, i] += 0.2
    return a / a.sum(dim=1, keepdim=True)


def test_a_random_walk_with_restart_keeps_the_peak_where_p0_put_it():
    p0 = torch.zeros(1, 12)
    p0[0, 8] = 1.0  # attending to the right means a position takes the value of its right neighbour
    a = drifting_affinity()
    moved = propagate(p0, a, (1, 12), steps=4)
    anchored = propagate(p0, a, (1, 12), steps=4, restart=0.5)
    assert int(moved.argmax()) != 8
    assert int(anchored.argmax()) == 8
    assert anchored[0, 7] > 0  # it still spreads to what the graph joins to the start
    assert torch.equal(propagate(p0, a, (1, 12), steps=4, restart=1.0), p0)  # restart 1: P0 itself


def test_the_walk_with_restart_is_the_fixed_point_of_its_equation():
    torch.manual_seed(0)
    a = torch.rand(16, 16).softmax(dim=1)
    p0 = torch.rand(4, 4)
    alpha = 0.3
    exact = alpha * torch.linalg.solve(torch.eye(16) - (1 - alpha) * a, p0.reshape(-1, 1))
    walked = propagate(p0, a, (4, 4), steps=1, restart=alpha)
    scaled = (exact - exact.min()) / (exact.max() - exact.min())
    assert torch.allclose(walked.reshape(-1, 1), scaled, atol=1e-4)


def test_restart_share_restarts_at_p0_s_highest_cells_only():
    a = torch.full((12, 12), 0.02)
    for i in range(12):  # each position attends to itself and its neighbours
        for j in (i - 1, i, i + 1):
            if 0 <= j < 12:
                a[i, j] = 1.0
    a = a / a.sum(dim=1, keepdim=True)
    p0 = torch.zeros(1, 12)
    p0[0, 2], p0[0, 9] = 1.0, 0.6  # the peak, and a weaker place elsewhere (a distractor's)
    whole = propagate(p0, a, (1, 12), steps=1, restart=0.3)
    top = propagate(p0, a, (1, 12), steps=1, restart=0.3, restart_share=1 / 12)
    peak_only = p0.clone()
    peak_only[0, 9] = 0.0
    assert torch.allclose(top, propagate(peak_only, a, (1, 12), steps=1, restart=0.3))
    assert top[0, 9] < whole[0, 9] - 0.2 and int(top.argmax()) == 2
    assert torch.equal(propagate(p0, a, (1, 12), steps=1, restart=0.3, restart_share=1.0), whole)
    assert torch.equal(propagate(p0, a, (1, 12), steps=2, restart_share=0.1), propagate(p0, a, (1, 12), steps=2))


def test_auto_propagation_is_the_top_share_walk_for_one_object_and_the_pick_for_instances(segmenter, picture):
    one, many = segmenter.resolve_settings(), segmenter.resolve_settings(instances=True)
    assert (one.restart_share, one.prior_pick) == (0.1, "fixed")
    assert (many.restart_share, many.prior_pick) == (1.0, "contrast")
    mine = segmenter.resolve_settings(instances=True, restart_share=0.5, prior_pick="fixed")
    assert (mine.restart_share, mine.prior_pick) == (0.5, "fixed")  # a value given is kept
    segmenter.set_image(picture)
    auto = segmenter.segment("the disc", instances=True)
    pick = segmenter.segment("the disc", instances=True, restart_share=1.0, prior_pick="contrast")
    top_share = segmenter.segment("the disc", instances=True, restart_share=0.2, prior_pick="fixed")
    np.testing.assert_array_equal(auto.prior_work, pick.prior_work)
    assert not np.allclose(auto.prior_work, top_share.prior_work)
    assert auto.settings.restart_share == 1.0 and segmenter.segment("the disc").settings.restart_share == 0.1
    one_auto = segmenter.segment("the disc")  # one object: the walk at P0's top 10 %, not the 20 % it was
    np.testing.assert_array_equal(one_auto.prior_work, segmenter.segment("the disc", restart_share=0.1).prior_work)
    assert not np.allclose(one_auto.prior_work, segmenter.segment("the disc", restart_share=0.2).prior_work)


def test_no_propagation_means_p0_whatever_the_walk_settings(segmenter, picture):
    segmenter.set_image(picture)
    bare = segmenter.segment("the disc", propagation_steps=0, restart=0.0, prior_pick="fixed")
    for walk in ({"restart": 0.5}, {"restart": 0.5, "smooth_steps": 2, "prior_pick": "contrast"}):
        again = segmenter.segment("the disc", propagation_steps=0, **walk)
        np.testing.assert_array_equal(again.prior_work, bare.prior_work)


def test_smooth_steps_are_plain_steps_after_the_walks_fixed_point():
    torch.manual_seed(1)
    a = torch.rand(16, 16).softmax(dim=1)
    p0 = torch.rand(4, 4)
    walked = propagate(p0, a, (4, 4), steps=1, restart=0.3)
    smoothed = propagate(p0, a, (4, 4), steps=1, restart=0.3, smooth_steps=2)
    expected = a @ a @ walked.reshape(-1, 1)  # scaling to [0, 1] commutes with A up to an offset: scale again
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert torch.allclose(smoothed.reshape(-1, 1), expected, atol=1e-4)
    assert not torch.allclose(smoothed, walked, atol=1e-3)


def test_without_the_walk_the_pick_and_smoothing_have_nothing_to_act_on(segmenter, picture):
    segmenter.set_image(picture)
    paper = segmenter.segment("the disc", restart=0.0, smooth_steps=0, prior_pick="fixed")
    moot = segmenter.segment("the disc", restart=0.0, smooth_steps=3, prior_pick="contrast")
    np.testing.assert_array_equal(moot.prior_work, paper.prior_work)


def test_score_contrast_is_how_far_the_mask_stands_out():
    scores = np.array([[0.9, 0.8], [0.1, 0.2]], np.float32)
    mask = np.array([[True, True], [False, False]])
    assert score_contrast(scores, mask) == pytest.approx(0.7)
    assert score_contrast(scores, ~mask) == pytest.approx(-0.7)
    assert score_contrast(scores, np.zeros_like(mask)) == -1.0 and score_contrast(scores, np.ones_like(mask)) == -1.0


def test_prior_pick_keeps_per_image_the_prior_whose_mask_stands_out_most(segmenter, picture):
    segmenter.set_image(picture)
    anchored = {"restart": 0.5, "smooth_steps": 1}
    paper = segmenter.segment("the disc", restart=0.0, prior_pick="fixed")
    walk = segmenter.segment("the disc", prior_pick="fixed", **anchored)
    picked = segmenter.segment("the disc", prior_pick="contrast", **anchored)
    assert not np.allclose(paper.prior_work, walk.prior_work)  # two different candidates
    best = max((paper, walk), key=lambda r: score_contrast(r.scores, r.mask))
    np.testing.assert_allclose(picked.prior_work, best.prior_work, atol=1e-6)
    np.testing.assert_array_equal(picked.mask, best.mask)
    assert picked.settings.prior_pick == "contrast"
    assert best is paper  # here the pick differs from the settings' own prior, so ignoring it fails


def instruction(expression: str) -> Instruction:
    return Instruction(expression, expression, (0,), False)


def test_decoy_ranks_rank_each_expression_among_decoys_of_as_many_words():
    expressions = [instruction("red circle"), instruction("dog")]
    decoys = [instruction(t) for t in ("big table", "top left", "soft bed", "cat", "sky")]
    # effects per row (expressions, then decoys) on two outputs
    effects = torch.tensor([[5.0, 5.0], [1.0, 3.0], [1.0, 1.0], [6.0, 6.0], [2.0, 9.0], [0.5, 4.0], [2.0, 2.0]])
    ranks = decoy_ranks(effects, expressions, decoys)
    assert ranks[0].item() == pytest.approx((2 / 3 + 1 / 3) / 2)  # above 2 of 3 on one output, 1 of 3 on the other
    assert ranks[1].item() == pytest.approx((1 / 2 + 1 / 2) / 2)  # "cat", "sky" only: the one-word decoys


def test_decoy_expressions_are_whole_words_of_the_vocabulary_and_repeatable(segmenter):
    from transformers import CLIPTokenizer

    vocab = {w + "</w>": i for i, w in enumerate(["the", "red", "circle", "table", "house", "river", "ab", "x1"])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer.__new__(CLIPTokenizer)  # only get_vocab is read
    tokenizer.get_vocab = lambda: vocab
    decoys = decoy_expressions(tokenizer, "Red  circle", 20, seed=3)
    assert decoys == decoy_expressions(tokenizer, "red circle", 20, seed=3)
    assert decoys != decoy_expressions(tokenizer, "red circle", 20, seed=4)
    words = {w for d in decoys for w in d.split()}
    assert all(len(d.split()) == 2 for d in decoys)
    assert words <= {"the", "table", "house", "river"}  # never the expression's own words, nor "ab" or "x1"
    # the tiny test model's tokenizer has letters only: random letters of the words' lengths
    letters = decoy_expressions(segmenter.model.tokenizer, "the disc", 3, seed=0)
    assert [len(w) for d in letters for w in d.split()] == [3, 4] * 3


def test_decoys_run_in_the_same_forward_and_become_the_confidence(segmenter, picture, count_rows):
    segmenter.set_image(picture)
    segmenter.segment("the disc")  # the relevance baseline is kept after this
    with count_rows(segmenter.model.unet) as plain:
        peak = segmenter.segment("the disc")
    with count_rows(segmenter.model.unet) as ranked:
        result = segmenter.segment("the disc", decoys=4)
    assert plain.calls == ranked.calls == 1
    assert ranked.rows == plain.rows + 4 * segmenter.settings.noise_samples
    assert 0.0 <= result.confidence <= 1.0
    assert (result.confidence * 8) == pytest.approx(round(result.confidence * 8))  # a share of 4 decoys × 2 blocks
    assert np.array_equal(result.mask, peak.mask)  # decoys change the confidence, not the mask
    forward = segmenter.forward(["the disc", "a square"], decoys=4)
    assert len(forward) == 2 and forward.decoy_rank.shape == (2,)


def test_cut_links_keeps_each_cells_links_to_its_most_alike_cells_only():
    features = torch.zeros(2, 2, 4)
    features[0, :, :2] = 1.0  # two kinds of cell: the left half and the right half
    features[1, :, 2:] = 1.0
    cut = cut_links(torch.full((8, 8), 1 / 8), features, (2, 4), share=0.5)
    left = torch.tensor([True, True, False, False] * 2)
    assert torch.allclose(cut.sum(dim=1), torch.ones(8))
    assert (cut[left][:, ~left] == 0).all() and (cut[~left][:, left] == 0).all()  # no link across the kinds
    assert torch.allclose(cut[left][:, left], torch.full((4, 4), 0.25))
    assert torch.allclose(cut_links(torch.full((8, 8), 1 / 8), features, (2, 4), share=1.0), torch.full((8, 8), 1 / 8))


def test_peak_links_walks_the_cut_affinity_and_one_keeps_every_link(segmenter, picture):
    """peak_links: the map keep=peak reads is the same walk over the affinity with links cut; with every
    link kept (1) it is the prior itself; 0 (the paper's and before 2026-12-07) reads the prior."""
    segmenter.set_image(picture)
    assert segmenter.segment("the disc", peak_links=0.0).peak_work is None
    whole = segmenter.segment("the disc", peak_links=1.0)
    np.testing.assert_allclose(whole.peak_work, whole.prior_work, atol=1e-4)  # renormalised rows round
    assert np.abs(segmenter.segment("the disc", peak_links=0.125).peak_work - whole.prior_work).max() > 0.01
    assert segmenter.segment("the disc", prior=whole.prior, peak_links=0.125).peak_work is None  # a given prior
    assert segmenter.refine(whole, prior=whole.prior).peak_work is None  # a new prior: its own peak


def test_keep_peak_keeps_the_part_at_the_peak_links_map(segmenter, picture):
    from dataclasses import replace

    from test_setting_effects import planted

    from napari_editseg.core.stages import delineate

    segmenter.set_image(picture)
    base = planted(segmenter.segment("the disc", edge_refine="none"))  # two blobs: the prior peaks on the second
    settings = base.settings.replace(keep="peak", edge_refine="none")
    h, w = base.prior_work.shape
    on_first = np.zeros((h, w), np.float32)
    on_first[h // 4, w // 4 - 3] = 1.0  # on the first blob's ring
    by_prior = delineate(replace(base, peak_work=None), settings)
    by_walk = delineate(replace(base, peak_work=on_first), settings)
    top_left = np.zeros(by_prior.mask.shape, bool)
    top_left[:by_prior.mask.shape[0] // 2, :by_prior.mask.shape[1] // 2] = True
    assert by_prior.mask.any() and not (by_prior.mask & top_left).any()
    assert by_walk.mask.any() and not (by_walk.mask & ~top_left).any()
