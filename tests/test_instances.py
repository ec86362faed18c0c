"""Instance mode: the mask split into the objects it holds (core/instances.py), on planted score
maps where the truth is known, and end to end through segment / refine on the tiny model."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_editseg.core.image import normalise01
from napari_editseg.core.instances import describe, split_instances


def discs(shape, centres, radius):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return [(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2 for r, c in centres]


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def planted_touching(gap=-3, radius=10, dip=1.0):
    """Two discs whose rims overlap by ``-gap`` pixels (one connected mask), a third apart, and a
    score map that is ``dip`` at the neck between the first two."""
    shape = (60, 90)
    objects = discs(shape, [(25, 20), (25, 20 + 2 * radius + gap), (45, 75)], radius)
    mask = np.any(objects, axis=0)
    scores = np.where(mask, 0.95, 0.05).astype(np.float32)
    neck = objects[0] & objects[1]
    scores[neck] = np.minimum(scores[neck], dip)
    return objects, mask, scores


def test_touching_objects_split_into_one_instance_each_and_components_do_not():
    objects, mask, scores = planted_touching()
    from scipy import ndimage

    assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 2  # the first two touch: one part
    labels, values = split_instances(mask, scores, scores, "watershed", 0.25, 20)
    assert labels.max() == 3 and len(values) == 3
    for obj in objects:  # each true object is one instance, IoU ≥ 0.8
        best = max(iou(labels == i, obj) for i in range(1, 4))
        assert best >= 0.8
    labels, _ = split_instances(mask, scores, scores, "components", 0.25, 20)
    assert labels.max() == 2


def test_a_score_dip_splits_what_the_shape_alone_does_not():
    objects, mask, scores = planted_touching(gap=-12, radius=10, dip=0.95)  # a wide neck: one blob by shape
    merged, _ = split_instances(mask, scores, scores, "watershed", 0.25, 20)
    dipped = scores.copy()
    dipped[objects[0] & objects[1]] = 0.1  # the features say: two objects meet here
    split, _ = split_instances(mask, dipped, dipped, "watershed", 0.25, 20)
    assert merged.max() == 2 and split.max() == 3


def test_split_depth_decides_how_deep_a_saddle_must_be():
    _, mask, scores = planted_touching(gap=-6)
    assert split_instances(mask, scores, scores, "watershed", 0.1, 20)[0].max() == 3
    assert split_instances(mask, scores, scores, "watershed", 0.9, 20)[0].max() == 2


def test_min_size_drops_small_objects_and_ids_run_by_score():
    _, mask, scores = planted_touching(gap=4)
    mask = mask.copy()
    mask[2:5, 80:83] = True  # a 9-pixel speck
    scores[2:5, 80:83] = 0.6
    prior = np.zeros_like(scores)
    prior[45, 75] = 1.0  # the prior looked at the third disc only
    labels, values = split_instances(mask, scores, prior, "watershed", 0.25, 5)
    assert labels.max() == 4
    labels, values = split_instances(mask, scores, prior, "watershed", 0.25, 20)
    assert labels.max() == 3 and list(values) == sorted(values, reverse=True)
    only, _ = split_instances(mask, scores, prior, "watershed", 0.25, 20, min_score=0.5)
    assert only.max() == 1 and np.array_equal(only == 1, labels == 1)  # the prior looked at one object only
    assert labels[45, 75] == 1  # where the words pointed ranks first
    table = describe(labels, values)
    assert [i.id for i in table] == [1, 2, 3]
    assert abs(table[0].centroid[0] - 45) < 1 and abs(table[0].centroid[1] - 75) < 1
    assert table[0].area == int((labels == 1).sum())


def test_an_empty_mask_has_no_instances():
    labels, values = split_instances(np.zeros((8, 8), bool), np.zeros((8, 8)), np.zeros((8, 8)))
    assert labels.max() == 0 and values == () and describe(labels, values) == []


def test_segment_and_refine_return_instances(segmenter, picture, count_calls):
    segmenter.set_image(picture)
    plain = segmenter.segment("the disc")
    assert plain.labels is None and plain.instances == []
    # one object's propagation of the prior, as `plain` was made with ("auto" resolves by task: refine
    # below keeps plain's prior, and instance mode's own would be another)
    one_object = {"restart_share": plain.settings.restart_share, "prior_pick": plain.settings.prior_pick}
    result = segmenter.segment("the disc", instances=True, keep="peak", min_instance_size=1, **one_object)
    assert result.labels is not None and result.labels.shape == picture.shape[:2]
    assert np.array_equal(result.mask, result.labels > 0)
    assert len(result.instances) == result.labels.max() == len(result.instance_scores)
    with count_calls(segmenter.model.unet) as forwards:
        again = segmenter.refine(plain, instances=True, min_instance_size=1)
    assert forwards.calls == 0 and np.array_equal(again.labels, result.labels)


@pytest.mark.parametrize("gap", [-3, 4])
def test_the_union_of_two_objects_as_prior_gives_two_instances(segmenter, picture, gap):
    """The plumbing end to end: a supplied prior holding two discs (touching or apart) on a picture
    that shows them gives two instances, each matching one disc."""
    shape = picture.shape[:2]
    objects = discs(shape, [(22, 18), (22, 18 + 24 + gap)], 12)
    image = np.full((*shape, 3), 90, np.uint8)
    for obj in objects:
        image[obj] = (230, 40, 40)
    segmenter.set_image(image)
    result = segmenter.segment("the red discs", prior=np.any(objects, axis=0), instances=True)
    assert result.labels.max() == 2, np.unique(result.labels)
    for obj in objects:
        assert max(iou(result.labels == i, obj) for i in (1, 2)) >= 0.7


def test_without_painted_drops_labelled_objects_and_trims_the_rest():
    from napari_editseg.core.instances import without_painted

    labels = np.zeros((10, 20), np.int32)
    labels[:, :8] = 1  # lies on a painted object
    labels[:, 10:18] = 2  # overlaps painted pixels a little
    painted = np.zeros((10, 20), bool)
    painted[:, :7] = True
    painted[:2, 10:18] = True
    out, values = without_painted(labels, (0.9, 0.8), painted, 5)
    assert values == (0.8,) and out.max() == 1
    assert not out[painted].any() and (out[2:, 10:18] == 1).all()


def test_sized_like_keeps_objects_near_the_exemplars_size():
    from napari_editseg.core.instances import sized_like

    labels = np.zeros((40, 40), np.int32)
    labels[:2, :5] = 1  # 10 px: a fragment
    labels[10:20, 10:20] = 2  # 100 px: like the exemplars
    labels[22:40, :] = 3  # 720 px: a stretch of background
    out, values = sized_like(labels, (0.9, 0.8, 0.7), (80, 120), 2.0)  # kept: 40 to 240 px
    assert values == (0.8,) and (out[10:20, 10:20] == 1).all() and out.sum() == 100
    assert sized_like(labels, (0.9, 0.8, 0.7), (80, 120), 0.0)[1] == (0.9, 0.8, 0.7)  # 0: any size
    assert sized_like(labels, (0.9, 0.8, 0.7), (), 2.0)[1] == (0.9, 0.8, 0.7)  # no exemplars: no rule


COLOURS = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.8, 0.1), "green": (0.1, 0.7, 0.2),
           "grey": (0.5, 0.5, 0.5)}


def alike_scene(exemplar_colours, found):
    """80×80 grey picture: three squares painted as labels 1-3 in ``exemplar_colours``; ``found``:
    (shape, colour, row, col, radius) of regions 1…k drawn in the picture too."""
    from napari_editseg.shapes_world import Shape, shape_mask

    rgb, labels, regions = np.full((80, 80, 3), 0.5), np.zeros((80, 80), np.int32), np.zeros((80, 80), np.int32)
    for k, (colour, col) in enumerate(zip(exemplar_colours, (12, 40, 68)), start=1):
        mask = shape_mask(Shape("square", colour, 12, col, 8), 80)
        rgb[mask], labels[mask] = COLOURS[colour], k
    for k, (shape, colour, row, col, radius) in enumerate(found, start=1):
        mask = shape_mask(Shape(shape, colour, row, col, radius), 80)
        rgb[mask], regions[mask] = COLOURS[colour], k
    return rgb, labels, regions


def test_regions_alike_match_what_the_exemplars_share_and_let_what_they_do_not_vary():
    from napari_editseg.core.alike import attributes, exemplar_bounds, regions_alike

    found = [("square", "green", 45, 12, 8), ("triangle", "green", 45, 40, 8), ("square", "green", 68, 68, 5)]

    def alike(exemplar_colours):
        rgb, labels, regions = alike_scene(exemplar_colours, found)
        bounds = exemplar_bounds(attributes(labels, rgb), [1, 2, 3])
        return regions, regions_alike(regions, (0.9, 0.8, 0.7), labels != 0, rgb, bounds)

    # the exemplars differ in colour (red, blue, red: a box over their channels would leave green out,
    # its green channel above theirs): the colour is free and the form counts
    regions, (out, scores) = alike(("red", "blue", "red"))
    assert scores == (0.9, 0.7) and np.array_equal(out == 1, regions == 1)  # the squares, not the triangle
    assert np.array_equal(out == 2, regions == 3)  # (its size is judged with the instances': exemplar_size)
    assert alike(("red", "red", "red"))[1][1] == ()  # they agree on red: a green square is not like them


def test_what_does_not_stand_out_is_never_like_the_exemplars():
    """A square of background (grey on grey) has the exemplars' form, and, where they differ in
    colour, a free colour; it stands out from its surroundings by nothing, so it is left out."""
    from napari_editseg.core.alike import attributes, exemplar_bounds, regions_alike

    rgb, labels, regions = alike_scene(("red", "blue", "yellow"), [("square", "grey", 45, 40, 8)])
    bounds = exemplar_bounds(attributes(labels, rgb), [1, 2, 3])
    assert regions_alike(regions, (0.9,), labels != 0, rgb, bounds)[1] == ()
    rgb[regions == 1] = COLOURS["green"]
    assert regions_alike(regions, (0.9,), labels != 0, rgb, bounds)[1] == (0.9,)


def test_form_is_measured_alike_on_a_ragged_mask():
    """A disc, a square and a triangle stay apart in form when their masks lose or gain pixels along
    the edge (as found masks do), where the pixel perimeter's circularity does not."""
    from napari_editseg.core.alike import FORM, TOLERANCE, _form
    from napari_editseg.shapes_world import Shape, shape_mask

    rng = np.random.default_rng(0)
    clean, ragged = {}, {}
    for shape in ("circle", "square", "triangle"):
        mask = shape_mask(Shape(shape, "red", 20, 20, 8), 40)
        edge = mask ^ ndimage.binary_erosion(mask) | ndimage.binary_dilation(mask) ^ mask
        flipped = mask ^ (edge & (rng.random(mask.shape) < 0.3))
        clean[shape], ragged[shape] = np.array(_form(mask)), np.array(_form(flipped))
    for shape in clean:
        assert np.all(np.abs(ragged[shape] - clean[shape]) <= TOLERANCE[FORM]), (shape, clean[shape], ragged[shape])
        for other in clean:
            if other != shape:  # another shape lies outside the tolerance on some attribute
                assert np.any(np.abs(ragged[other] - clean[shape]) > TOLERANCE[FORM]), (shape, other)


def test_coloured_alike_keeps_the_exemplars_colour_and_what_stands_out():
    from napari_editseg.core.alike import attributes, coloured_alike, exemplar_bounds

    found = [("circle", "red", 45, 12, 6), ("circle", "green", 45, 40, 6), ("circle", "grey", 68, 68, 6)]
    rgb, labels, regions = alike_scene(("red", "red", "red"), found)
    bounds = exemplar_bounds(attributes(labels, rgb), [1, 2, 3])
    out, scores = coloured_alike(regions, (0.9, 0.8, 0.7), rgb, bounds)  # form is not asked of them
    assert scores == (0.9,) and np.array_equal(out == 1, regions == 1)
    rgb, labels, regions = alike_scene(("red", "blue", "red"), found)  # colour free: only the grey one goes
    bounds = exemplar_bounds(attributes(labels, rgb), [1, 2, 3])
    assert coloured_alike(regions, (0.9, 0.8, 0.7), rgb, bounds)[1] == (0.9, 0.8)


def test_exemplar_regions_find_the_second_disc_like_the_painted_one(segmenter, picture):
    twice = np.tile(picture, (1, 2, 1))
    segmenter.set_image(twice)
    rows, cols = np.mgrid[:twice.shape[0], :twice.shape[1]]
    labels = ((rows - 20) ** 2 + (cols - 18) ** 2 < 100).astype(np.int32)  # the left disc painted
    right = (rows - 20) ** 2 + (cols - 78) ** 2 < 100
    without = segmenter.segment_like(labels, [1], exemplar_size=0, exemplar_regions=False)
    alike = segmenter.segment_like(labels, [1], exemplar_size=0, exemplar_regions=True)
    assert not (without.labels[right] > 0).any()  # the random tiny model's features do not find it
    found = np.unique(alike.labels[right])
    assert len(found) == 1 and found[0] > 0 and (alike.labels == found[0]).sum() <= 1.1 * right.sum()
    assert not alike.labels[labels > 0].any()
    again = segmenter.refine(alike, mask_threshold=0.6)  # a re-threshold keeps the region
    assert (again.labels[right] > 0).all()
    square = np.zeros_like(labels)
    square[15:25, 13:23] = 1  # 100 px inside the left disc: the right disc (about 305 px) is three times it
    far = segmenter.segment_like(square, [1], exemplar_regions=True, exemplar_size=2.0, exemplar_granularity=0)
    near = segmenter.refine(far, exemplar_size=4.0)  # refine's size rule judges the regions too
    assert not (far.labels[right] > 0).any() and (near.labels[right] > 0).all()


def test_exemplar_colour_is_a_rule_refine_can_change(segmenter, picture):
    """What the colour rule drops, a refine without it brings back, with no new forward."""
    twice = np.tile(picture, (1, 2, 1))
    segmenter.set_image(twice)
    rows, cols = np.mgrid[:twice.shape[0], :twice.shape[1]]
    labels = ((rows - 20) ** 2 + (cols - 18) ** 2 < 100).astype(np.int32)
    ruled = segmenter.segment_like(labels, [1], exemplar_size=0)
    free = segmenter.refine(ruled, exemplar_colour=False)
    assert len(free.instance_scores) > len(ruled.instance_scores)
    assert set(ruled.instance_scores) <= set(free.instance_scores)
    assert not free.labels[labels > 0].any()


def test_joined_where_free_adds_regions_only_where_no_instance_is():
    from napari_editseg.core.instances import joined_where_free

    labels = np.zeros((10, 10), np.int32)
    labels[:5] = 1
    extra = np.zeros((10, 10), np.int32)
    extra[3:8] = 1  # 60 % free: joins, on its free rows only
    extra[:4, :2] = 2  # all on instance 1: left out
    out, scores = joined_where_free(labels, (0.5,), extra, (0.9, 0.8))
    assert scores == (0.9, 0.5) and (out[5:8] == 1).all() and (out[:5] == 2).all() and not out[8:].any()


def test_one_foreground_prototype_per_part_in_instance_mode():
    import torch

    from napari_editseg.core.discriminate import prototypes

    features = torch.zeros(3, 8, 8)
    features[0] = 1.0
    prior = torch.zeros(8, 8)
    for (r, c), direction in (((1, 1), 1), ((5, 5), 2)):  # two objects of different kinds
        features[:, r:r + 2, c:c + 2] = 0.0
        features[direction, r:r + 2, c:c + 2] = 1.0
        prior[r:r + 2, c:c + 2] = 1.0
    one, _ = prototypes(features, prior, 0.9, 0.5, 1, 0, "otsu")
    parts, _ = prototypes(features, prior, 0.9, 0.5, 1, 0, "otsu", fg_parts=True)
    assert one.shape[0] == 1 and parts.shape[0] == 2
    assert {int(p.argmax()) for p in parts} == {1, 2}


def painted_labels(shape):
    """Three painted objects: ids 4 and 9 are the exemplars, 7 is another painted label."""
    labels = np.zeros(shape, np.int32)
    labels[5:15, 5:15] = 4
    labels[25:35, 40:50] = 9
    labels[5:12, 45:58] = 7
    return labels


def test_exemplars_never_claim_a_painted_pixel_also_after_refine(segmenter, picture):
    segmenter.set_image(picture)
    labels = painted_labels(picture.shape[:2])
    before = labels.copy()
    for words in (None, "the disc"):
        result = segmenter.segment_like(labels, [4, 9], words, min_instance_size=1, mask_threshold=0.0,
                                        exemplar_size=0)  # any size: every unpainted pixel may be claimed
        assert result.labels is not None and result.labels.max() >= 1  # it found something
        assert not result.mask[labels != 0].any() and not result.labels[labels != 0].any()
        again = segmenter.refine(result, mask_threshold=0.0, positive=[(8, 8)])
        assert not again.mask[labels != 0].any() and not again.labels[labels != 0].any()
    assert np.array_equal(labels, before)  # the caller's labels are not written to


def test_the_colour_cue_finds_what_has_the_exemplars_colour():
    from napari_editseg.core.prompts import exemplar_cue_prior

    rgb = np.full((16, 16, 3), 0.5, np.float32)
    rgb[2:6, 2:6] = (0.9, 0.1, 0.1)  # the exemplar: red
    rgb[10:14, 10:14] = (0.9, 0.1, 0.1)  # another red object
    rgb[2:6, 10:14] = (0.1, 0.1, 0.9)  # a blue one
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6] = 1
    features = torch.randn(8, 16, 16, generator=torch.Generator().manual_seed(0))  # features that say nothing
    colour = exemplar_cue_prior(features, rgb, labels, [1], "colour")
    assert colour[12, 12] > 0.9 and colour[4, 12] < 0.3
    plain = exemplar_cue_prior(features, rgb, labels, [1], "features")
    assert plain[12, 12] < 0.9  # the random features alone do not find it
    both = exemplar_cue_prior(features, rgb, labels, [1], "both")
    assert torch.allclose(both, normalise01((plain * colour).sqrt()))


def test_bad_exemplars_are_refused_in_one_line(segmenter, picture):
    segmenter.set_image(picture)
    labels = painted_labels(picture.shape[:2])
    for bad_labels, ids, message in ((labels[:-1], [4], "size"), (labels, [5], r"\[5\] not painted"),
                                     (labels, [], "none given"), (labels, ["x"], "label ids"),
                                     (labels.astype(float), [4], "integer label image")):
        with pytest.raises(ValueError, match=message) as error:
            segmenter.segment_like(bad_labels, ids)
        assert "\n" not in str(error.value)


def test_segment_everything_labels_regions_by_score(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment_everything(min_instance_size=1)
    n = int(result.labels.max())
    assert n >= 2 and set(np.unique(result.labels)) <= set(range(n + 1))
    assert np.array_equal(result.mask, result.labels > 0) and len(result.instance_scores) == n
    assert list(result.instance_scores) == sorted(result.instance_scores, reverse=True)
    assert (result.labels > 0).mean() > 0.9  # every pixel joins a region unless its region is too small


def test_one_label_segmented_again_stays_in_its_box_and_off_the_others(segmenter, picture):
    segmenter.set_image(picture)
    labels = painted_labels(picture.shape[:2])
    labels[14:20, 5:15] = 5  # another label touching label 4's box
    result = segmenter.segment_label(labels, 4, mask_threshold=0.0)
    # label 4 now holds rows 5-13, columns 5-14: grown by 25 % of its size a side, outward to whole pixels
    assert result.mask.any() and result.box == (2, 2, 17, 18)
    assert not result.mask[(labels != 0) & (labels != 4)].any()
    rows, cols = np.nonzero(result.mask)
    assert rows.min() >= 2 and rows.max() < 17 and cols.min() >= 2 and cols.max() < 18
    shrunk = segmenter.refine(result, mask_threshold=0.0, negative=[(8, 8)])
    assert not shrunk.mask[(labels != 0) & (labels != 4)].any() and shrunk.box == result.box
    with pytest.raises(ValueError, match="not painted"):
        segmenter.segment_label(labels, 6)
