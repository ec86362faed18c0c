"""The shapes world: scenes whose expressions name exactly one object, and edits of only it."""

import numpy as np
import pytest

from napari_editseg.shapes_world import COLOURS, KINDS, SHAPES, WORDS, held_out, make_sample, prior_choice


def test_samples_are_deterministic_and_balanced():
    a, b = make_sample(123), make_sample(123)
    assert np.array_equal(a.image, b.image) and a.instruction == b.instruction
    assert [s.kind for s in held_out(8)] == list(KINDS) * 2


@pytest.mark.parametrize("seed", range(40))
def test_the_expression_names_exactly_the_referred_object(seed):
    s = make_sample(seed)
    target = s.objects[s.index]
    words = s.expression.split()
    assert set(s.instruction.split()) <= set(WORDS)
    same = [o for o in s.objects if o.shape == target.shape and o.colour == target.colour]
    if s.kind == "colour+shape":
        assert words == [target.colour, target.shape] and len(same) == 1
    elif s.kind == "shape":
        assert words == [target.shape] and sum(o.shape == target.shape for o in s.objects) == 1
    elif s.kind == "colour":
        assert words == [target.colour] and sum(o.colour == target.colour for o in s.objects) == 1
    else:  # spatial: a twin of the same colour and shape, told apart by the relation
        relation, colour, shape = words
        assert (colour, shape) == (target.colour, target.shape) and len(same) == 2
        twin = next(o for o in same if o is not target)
        holds = {"left": target.col < twin.col, "right": target.col > twin.col, "top": target.row < twin.row,
                 "bottom": target.row > twin.row, "bigger": target.radius > twin.radius,
                 "smaller": target.radius < twin.radius}
        assert holds[relation]
    assert s.new_colour != target.colour and s.new_colour in COLOURS and target.shape in SHAPES


@pytest.mark.parametrize("seed", range(10))
def test_the_edit_changes_only_the_referred_object(seed):
    s = make_sample(seed)
    changed = (s.image != s.target).any(axis=2)
    assert changed.any() and not changed[~s.mask].any()
    assert s.mask.sum() > 30 and not any((s.masks[i] & s.mask).any() for i in range(len(s.masks)) if i != s.index)


def test_prior_choice_picks_the_object_under_the_prior():
    s = make_sample(5)
    prior = np.zeros(s.mask.shape, np.float32)
    prior[s.mask] = 1.0
    assert prior_choice(prior, s.masks) == s.index
