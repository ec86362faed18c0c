"""Shapes world v2 and its training recipe: scenes whose expressions name exactly one object at
RefCOCO's proportions, and a training loop that resumes where a chunk stopped."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.shapes_world.world_v2 import (
    COLOURS,
    KINDS,
    PATTERNS,
    SHAPES,
    SIZE,
    WORDS,
    held_out,
    make_sample,
    shape_mask,
)

RECIPE = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes_world"
needs_recipe = pytest.mark.skipif(not (RECIPE / "train_staged.py").is_file(),
                                  reason="the training recipe and probes live in the repository's benchmarks/, "
                                         "not in the sdist")


def test_samples_are_deterministic_and_balanced():
    a, b = make_sample(7), make_sample(7)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.instruction == b.instruction
    assert [s.kind for s in held_out(10)] == list(KINDS) * 2
    assert a.image.shape == (SIZE, SIZE, 3) and a.image.dtype == np.uint8


@pytest.mark.parametrize("seed", range(30))
def test_the_expression_names_exactly_the_referred_object(seed):
    s = make_sample(seed, kind=KINDS[seed % len(KINDS)])
    target = s.objects[s.index]
    words = s.expression.split()
    assert set(s.instruction.split()) <= set(WORDS) and set(s.caption.replace(",", "").split()) <= set(WORDS)

    def count(key):
        return sum(key(o) == key(target) for o in s.objects)

    if s.kind == "colour+shape":
        assert words == [target.colour, target.shape] and count(lambda o: (o.colour, o.shape)) == 1
    elif s.kind == "shape":
        assert words == [target.shape] and count(lambda o: o.shape) == 1
    elif s.kind == "colour":
        assert words == [target.colour] and count(lambda o: o.colour) == 1
    elif s.kind == "pattern":
        assert words == [target.pattern, target.colour, target.shape] and target.pattern != "plain"
        assert count(lambda o: (o.pattern, o.colour, o.shape)) == 1 and count(lambda o: (o.colour, o.shape)) >= 2
    else:
        relation, *rest = words
        twins = [o for o in s.objects if (o.colour, o.shape, o.pattern) == (target.colour, target.shape,
                                                                            target.pattern)]
        assert " ".join(rest) == target.words() and len(twins) == 2
        twin = next(o for o in twins if o is not target)
        holds = {"left": target.col < twin.col, "right": target.col > twin.col, "top": target.row < twin.row,
                 "bottom": target.row > twin.row, "bigger": target.radius > twin.radius,
                 "smaller": target.radius < twin.radius}
        assert holds[relation]
    assert s.new_colour != target.colour and s.new_colour in COLOURS
    assert target.shape in SHAPES and target.pattern in PATTERNS


@pytest.mark.parametrize("seed", range(10))
def test_visible_masks_follow_occlusion_and_the_edit_changes_only_the_referred_object(seed):
    s = make_sample(seed)
    for i, m in enumerate(s.masks):  # each object's visible part, none shared
        assert not any((m & other).any() for j, other in enumerate(s.masks) if j != i)
        assert m.sum() >= 0.5 * shape_mask(s.objects[i]).sum()
    changed = (s.image != s.target).any(axis=2)
    assert changed.any() and not changed[~s.mask].any()
    assert s.mask.sum() >= 0.7 * shape_mask(s.objects[s.index]).sum()


def test_objects_are_at_refcoco_proportions_and_captions_name_every_object():
    scenes = held_out(100)
    areas = np.array([s.mask.mean() for s in scenes])
    assert 0.08 < np.median(areas) < 0.2 and np.percentile(areas, 90) > 0.15
    assert {len(s.objects) for s in scenes} == {2, 3, 4, 5, 6}
    for s in scenes:
        assert s.caption.count(" a ") + s.caption.startswith("a ") == len(s.objects)


@needs_recipe
def test_the_widened_unet_starts_as_the_text_to_image_model():
    """InstructPix2Pix's trick: the new input channels start at zero, so before any editing
    step the model ignores the source image and predicts what the text-to-image model did."""
    from benchmarks.shapes_world.train_staged import build_unet, widen_input

    torch.manual_seed(0)
    t2i = build_unet(4).eval()
    edit = widen_input(t2i).eval()
    x, source, text = torch.randn(2, 4, 32, 32), torch.randn(2, 4, 32, 32), torch.randn(2, 5, 128)
    with torch.no_grad():
        before = t2i(x, 500, encoder_hidden_states=text).sample
        after = edit(torch.cat([x, source], dim=1), 500, encoder_hidden_states=text).sample
    torch.testing.assert_close(before, after)
    assert edit.conv_in.in_channels == 8 and not edit.conv_in.weight[:, 4:].any()


@needs_recipe
def test_a_chunk_ends_on_its_own_clock_not_its_stage_s(tmp_path):
    """A chunk that spent its minutes in earlier stages stops the next stage after one step (each stage
    once counted from its own start, so a 125-minute chunk ran on for hours in its last stage)."""
    from benchmarks.shapes_world.train_staged import Chunk

    class Args:
        seed, ema, save_every, max_minutes, started = 0, 0.9, 1000, 30.0, time.time() - 3600

    model = torch.nn.Linear(2, 1)

    def stage() -> Chunk:
        return Chunk(tmp_path, {"m": model}, torch.optim.SGD(model.parameters(), lr=0.1), 10, 1, Args,
                     lambda record: None)

    def step(g):
        return model(torch.randn(4, 2, generator=g)).pow(2).mean()

    chunk = stage()
    assert not chunk.run(step, "test")
    assert chunk.step == 1 and (tmp_path / "state.pt").exists()
    Args.started = time.time()  # a fresh chunk: the stage runs to its end
    assert stage().run(step, "test")


@needs_recipe
def test_a_stage_run_in_two_chunks_equals_one_run(tmp_path):
    """Resuming restores weights, EMA, optimiser, schedule and the random generator: two chunks
    end exactly where one uninterrupted run does."""
    from benchmarks.shapes_world.train_staged import Chunk

    class Args:
        seed, ema, save_every, max_minutes, started = 0, 0.9, 1000, 1e9, time.time()

    def train(folder, out_of_time=False):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimiser = torch.optim.AdamW(model.parameters(), lr=0.1)
        chunk = Chunk(folder, {"m": model}, optimiser, 10, 3, Args, lambda record: None)
        target = torch.tensor([1.0, -2.0, 0.5, 3.0])

        def step(g):
            x = torch.randn(8, 4, generator=g)
            return (model(x)[:, 0] - x @ target).pow(2).mean()

        if out_of_time:  # a chunk whose time is spent after its first step
            Args.max_minutes = 0.0
        done = chunk.run(step, "test")
        Args.max_minutes = 1e9
        return done, model, chunk

    _, whole, whole_chunk = train(tmp_path / "whole")
    done, _, _ = train(tmp_path / "split", out_of_time=True)
    assert not done and (tmp_path / "split" / "state.pt").exists()
    done, resumed, resumed_chunk = train(tmp_path / "split")
    assert done and resumed_chunk.step == 10
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(whole_chunk.ema["m"].parameters(), resumed_chunk.ema["m"].parameters()):
        torch.testing.assert_close(a, b)


class Painter:
    """Stands in for a text-to-image pipeline to check the drawing probe's classifier: draws the
    caption's object with the world's own renderer (``lie`` swaps its colour for another)."""

    def __init__(self, lie=False):
        self.lie = lie

    def __call__(self, caption, generator, **_):
        from types import SimpleNamespace

        from benchmarks.shapes_world.world_v2 import Object, render

        _, colour, shape = caption.split()
        if self.lie:
            colour = next(c for c in COLOURS if c != colour)
        seed = int(generator.initial_seed())
        image, _ = render([Object(shape, colour, "plain", 60.0 + seed % 9, 64.0, 30.0)], [colour], SIZE, seed)
        return SimpleNamespace(images=[image.astype(np.float32) / 255])


@needs_recipe
def test_the_drawing_probe_reads_colour_and_shape():
    from benchmarks.shapes_world.probes import drawing_accuracy

    right = drawing_accuracy(Painter(), n=24)
    assert right["colour"] == 100 and right["shape"] >= 90
    wrong = drawing_accuracy(Painter(lie=True), n=12)
    assert wrong["colour"] == 0 and wrong["both"] == 0
