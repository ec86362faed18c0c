"""The shapes world: scenes whose expressions name exactly one object, and edits of only it."""

from pathlib import Path

import numpy as np
import pytest

from napari_editseg import EditSegmenter
from napari_editseg.core.settings import PAPER
from napari_editseg.shapes_world import (
    COLOURS,
    KINDS,
    SHAPES,
    TEST_SEEDS,
    WORDS,
    held_out,
    make_sample,
    with_absent_expressions,
    with_other_expressions,
)

try:  # the probes are study code in the repository's benchmarks/, not in the sdist
    from benchmarks.shapes_world.probes import (
        edit_errors,
        layer_accuracy,
        load_pipeline,
        prior_choice,
        prior_from_layers,
        score_scenes,
        text_effect_accuracy,
    )
except ImportError:
    probes_missing = "the shapes-world probes live in the repository's benchmarks/, not in the sdist"
else:
    probes_missing = None


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


@pytest.mark.skipif(probes_missing is not None, reason=str(probes_missing))
def test_prior_choice_picks_the_object_under_the_prior():
    s = make_sample(5)
    prior = np.zeros(s.mask.shape, np.float32)
    prior[s.mask] = 1.0
    assert prior_choice(prior, s.masks) == s.index


# -- the shipped trained model ---------------------------------------------------------
# Thresholds come from benchmarks/shapes_world/evaluate.py (docs/shapes-world.md) on the
# shipped checkpoint, with a margin of about three standard errors of the smaller samples
# used here. Chance is ~39 % (2-4 objects per scene). Each test guards one link of the chain
# "the model edits the named object -> one forward knows where -> the captured maps show it".
CHECKPOINT = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes_world" / "checkpoint"


def needs_checkpoint():
    if not (CHECKPOINT / "model_index.json").is_file():
        pytest.skip("the trained shapes-world checkpoint ships with the repository, not the sdist")
    if probes_missing:
        pytest.skip(probes_missing)


@pytest.fixture(scope="module")
def trained_segmenter():
    needs_checkpoint()
    return EditSegmenter.from_pretrained(str(CHECKPOINT), device="cpu")


@pytest.fixture(scope="module")
def trained_pipeline():
    needs_checkpoint()
    return load_pipeline(str(CHECKPOINT))


def test_auto_settings_resolve_to_the_analogous_layers_of_the_shipped_model(trained_segmenter):
    settings = trained_segmenter.resolve_settings()
    # 16x16 latents x VAE factor 4; sides rounded to 4 x 2^(4-1); prior at latent/4 and /2,
    # affinity at latent/2, the two up-blocks before the last, a work grid at latent side
    assert (settings.resolution, settings.size_multiple) == (64, 32)
    assert (settings.prior_resolutions, settings.affinity_resolution) == ((4, 8), 8)
    assert settings.feature_blocks == ("up_blocks.1", "up_blocks.2")
    assert (settings.work_resolution, settings.timestep) == (16, 999)


@pytest.mark.slow
def test_the_model_really_edits_the_named_object(trained_pipeline):
    # measured: 38 grey levels inside against 103 for doing nothing (12 scenes, 10 steps), and
    # the most-changed object is the named one in 67 % (chance 36 %; 35-40 % with another
    # scene's instruction); a model that only copies its input, or recolours at random, fails
    report = edit_errors(trained_pipeline, held_out(12, TEST_SEEDS + 50_000), steps=10)
    assert report["error_inside_edit"] < 0.6 * report["error_inside_doing_nothing"]
    assert report["edited_object_accuracy"] > report["chance"] + 10


@pytest.mark.slow
def test_one_forward_at_the_first_step_knows_where_the_edit_goes(trained_pipeline):
    # the paper's premise, read off the noise prediction itself. Measured on these 120 scenes:
    # 62.5 % with the scene's own words, 38 % with the next scene's (chance 39 %)
    scenes = held_out(120)
    own = text_effect_accuracy(trained_pipeline, scenes, timesteps=("first",))["first"]
    other = text_effect_accuracy(trained_pipeline, with_other_expressions(scenes), timesteps=("first",))["first"]
    assert own >= 50 and own >= other + 10


@pytest.mark.slow
def test_cross_attention_to_the_expression_tokens_is_grounded(trained_segmenter):
    # up_blocks.3's first cross-attention (latent resolution) follows the words: measured 63 %
    # with the scene's own words against 42 % with the next scene's on these 120 scenes. Wrong
    # token columns, a wrong layer mapping or a broken capture make the two equal. (The default
    # prior reads other layers, some of them anti-grounded, and is at chance on this model:
    # see docs/shapes-world.md.)
    scenes = held_out(120)
    own = layer_accuracy(trained_segmenter, scenes)["up_blocks.3.attn0"]
    other = layer_accuracy(trained_segmenter, with_other_expressions(scenes))["up_blocks.3.attn0"]
    assert own >= other + 10


@pytest.mark.slow
def test_a_decoder_only_prior_finds_the_object_more_often_on_this_model(trained_segmenter):
    # the finding behind the prior_layers setting (attention prior, the paper's path): measured
    # on these 120 scenes, object accuracy 49 % with prior_layers="decoder" against 33 % with
    # all layers (chance 39 %), mIoU 16.2 against 7.7
    scenes = held_out(120)
    default = score_scenes(trained_segmenter, scenes, methods=("editseg",), **PAPER)
    decoder = score_scenes(trained_segmenter, scenes, methods=("editseg",), **PAPER, prior_layers="decoder")
    assert decoder["object accuracy"]["all"] >= default["object accuracy"]["all"] + 8
    assert decoder["editseg"]["all"]["mIoU"] >= 1.5 * default["editseg"]["all"]["mIoU"]


@pytest.mark.slow
def test_the_default_prior_reads_the_words(trained_segmenter):
    # the relevance prior (the default): measured on these 120 scenes, object accuracy 55 % with
    # the scene's own words against 42.5 % with the next scene's (chance 39 %), editseg mIoU 46.6
    # against 8.8 for the paper's preset, whose attention prior is at chance here (33 %).
    # Ignoring the expression, or comparing the instruction with itself, makes own = other.
    scenes = held_out(120, TEST_SEEDS + 30_000)
    own = score_scenes(trained_segmenter, scenes, methods=("editseg",))
    other = score_scenes(trained_segmenter, with_other_expressions(scenes), methods=())
    assert own["object accuracy"]["all"] >= other["object accuracy"]["all"] + 10
    paper = score_scenes(trained_segmenter, scenes, methods=("editseg",), **PAPER)
    assert own["editseg"]["all"]["mIoU"] >= 2 * paper["editseg"]["all"]["mIoU"]


@pytest.mark.slow
def test_features_and_edges_delineate_the_object_from_the_right_place(trained_segmenter):
    # steps 6-7 alone: given a prior that lies on the named object (the ground truth as prior),
    # the prototypes, the cosine scores and the guided filter find it. Measured mIoU 99.7 and
    # boundary F 0.998 on these scenes (solid shapes: the image's own edges are all it takes);
    # with the paper's preset (fixed-share prototypes, one background prototype, no edge step)
    # mIoU 23.5 and boundary F 0.07.
    scenes = held_out(60, TEST_SEEDS + 70_000)
    ceiling = prior_from_layers(trained_segmenter, scenes, layers=None)  # the truth as prior
    paper = prior_from_layers(trained_segmenter, scenes, layers=None, **PAPER)
    assert ceiling["mIoU"] >= 70 and ceiling["boundary F"] >= 0.8
    assert paper["mIoU"] < 35 and paper["boundary F"] < 0.5


@pytest.mark.slow
def test_bf16_gives_the_masks_float32_gives_on_the_trained_model(trained_segmenter):
    # trained weights give maps with structure, so agreement of masks means something here (on
    # random weights the maps are nearly flat and any rounding flips them). Measured on 200
    # held-out scenes: mean IoU with float32's masks 0.968 (bfloat16 weights, what `auto` picks for
    # real-size models on a bf16 CPU, and bf16-autocast alike); mIoU against the truth 54.5-54.7 all
    # three. It was 0.984 before the walk restarted at P0's top 20 % (a cut at a quantile that rounding
    # moves a few cells across: docs/performance.md); 40 scenes hold 0.968-0.978 now.
    import torch

    def iou(a, b):
        union = (a | b).sum()
        return 1.0 if union == 0 else (a & b).sum() / union

    others = {name: EditSegmenter.from_pretrained(str(CHECKPOINT), device="cpu", dtype=name)
              for name in ("bfloat16", "bf16-autocast")}
    assert others["bfloat16"].model.unet.dtype == torch.bfloat16 and others["bf16-autocast"].model.autocast
    assert trained_segmenter.model.dtype == torch.float32  # auto: a 2.2 M-parameter UNet stays float32
    agreement, truth = {n: [] for n in others}, {n: [] for n in ("float32", *others)}
    for scene in held_out(40, TEST_SEEDS + 90_000):
        masks = {}
        for name, segmenter in (("float32", trained_segmenter), *others.items()):
            segmenter.set_image(scene.image)
            masks[name] = segmenter.segment(scene.expression).mask
            truth[name].append(iou(masks[name], scene.mask))
        for name in others:
            agreement[name].append(iou(masks["float32"], masks[name]))
    for name in others:
        assert np.mean(agreement[name]) >= 0.95, name
        assert abs(np.mean(truth["float32"]) - np.mean(truth[name])) <= 0.02, name


@pytest.mark.slow
def test_batched_images_give_the_masks_of_one_image_at_a_time(trained_segmenter):
    # measured on 32 held-out scenes, batches of 8 and 32: every mask equal, features within 2e-7
    scenes = held_out(16, TEST_SEEDS + 95_000)
    batched = trained_segmenter.segment_images([s.image for s in scenes], [[s.expression] for s in scenes])
    for scene, (result,) in zip(scenes, batched):
        trained_segmenter.set_image(scene.image)
        assert np.array_equal(trained_segmenter.segment(scene.expression).mask, result.mask)


@pytest.mark.slow
def test_the_decoy_confidence_tells_present_from_absent_objects_where_peak_dominance_cannot(trained_segmenter):
    # measured on these 100 scenes (present: the scene's expression; absent: one naming nothing
    # in it): AUROC with 8 decoys 0.595, with the peak dominance of P0 (decoys=0) 0.481 — weak, but
    # not chance; on 300 other held-out scenes 0.59 [0.55, 0.64] against 0.49 (docs/shapes-world.md).
    scenes = held_out(100, TEST_SEEDS + 90_000)
    absent = with_absent_expressions(scenes, 1)

    def auroc(**overrides) -> float:
        present, missing = [], []
        for scene, other in zip(scenes, absent):
            trained_segmenter.set_image(scene.image)
            present.append(trained_segmenter.segment(scene.expression, **overrides).confidence)
            missing.append(trained_segmenter.segment(other.expression, **overrides).confidence)
        pos, neg = np.asarray(present)[:, None], np.asarray(missing)[None, :]
        return float(((pos > neg) + 0.5 * (pos == neg)).mean())

    ranked, peak = auroc(decoys=8), auroc()
    assert ranked >= 0.56 and ranked >= peak + 0.05, (ranked, peak)
