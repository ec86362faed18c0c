"""The API under misuse: threads, odd inputs, memory guards, safe loading. Real forwards of the
tiny model; a forward is only ever slowed down (a hook that waits), never replaced."""

import re
import threading
import warnings

import numpy as np
import pytest
import torch

from napari_editseg import EditSegmenter
from napari_editseg.core.budget import MemoryBudgetError, memory_error_from
from napari_editseg.core.image import ImageScalingWarning, to_rgb_float
from napari_editseg.testing import build_tiny_pipeline, never_runs


# -- threads ------------------------------------------------------------------------------
def test_two_threads_segmenting_at_once_get_what_each_would_get_alone(segmenter, picture):
    segmenter.set_image(picture)
    alone = {e: segmenter.segment(e).scores for e in ("the disc", "the square")}
    before = dict(segmenter.model.unet.attn_processors)
    results, errors = {}, []

    def work(expression):
        try:
            for _ in range(3):
                results[expression] = segmenter.segment(expression).scores
        except Exception as error:  # a KeyError from a shared capture store would land here
            errors.append(error)

    threads = [threading.Thread(target=work, args=(e,)) for e in alone]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for expression, scores in alone.items():
        np.testing.assert_array_equal(results[expression], scores)
    after = segmenter.model.unet.attn_processors
    assert all(after[name] is before[name] for name in before)  # every processor restored


def test_set_image_during_a_segment_waits_and_the_result_belongs_to_the_first_image(segmenter, picture):
    other = np.ascontiguousarray(picture[::-1, ::-1])
    segmenter.set_image(other)
    expected_other = segmenter.segment("the disc").scores
    segmenter.set_image(picture)
    expected = segmenter.segment("the disc").scores

    in_forward, release = threading.Event(), threading.Event()

    def hold(*_):
        in_forward.set()
        release.wait(30)

    handle = segmenter.model.unet.down_blocks[0].register_forward_hook(hold)
    found = {}
    worker = threading.Thread(target=lambda: found.update(first=segmenter.segment("the disc").scores))
    worker.start()
    assert in_forward.wait(30)
    handle.remove()
    swapper = threading.Thread(target=segmenter.set_image, args=(other,))
    swapper.start()
    swapper.join(0.5)
    assert swapper.is_alive()  # set_image waits for the running segment
    release.set()
    worker.join(30)
    swapper.join(30)
    np.testing.assert_array_equal(found["first"], expected)
    np.testing.assert_array_equal(segmenter.segment("the disc").scores, expected_other)


# -- odd inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("points", ["(3, 4)", (3, 4), [(1, 2, 3)], [(1, "a")], [(np.nan, 1)], 5],
                         ids=["text", "one-pair", "three-values", "text-value", "nan", "number"])
def test_bad_click_points_are_refused_with_the_expected_shape(segmenter, picture, points):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc")
    with pytest.raises(ValueError, match=r"list of \(row, col\) pixel points"):
        segmenter.refine(result, positive=points)


def test_numpy_points_settings_and_a_generator_of_expressions_work(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc", mask_threshold=np.float32(0.4), bg_prototypes=np.int64(2))
    assert result.settings.mask_threshold == pytest.approx(0.4) and result.settings.bg_prototypes == 2
    clicked = segmenter.refine(result, positive=np.array([[10, 12]]))
    assert clicked.positive == ((10, 12),)
    batch = segmenter.segment_batch(e for e in ("the disc", "the square"))
    assert [r.expression for r in batch] == ["the disc", "the square"]


def test_a_truncated_instruction_records_the_text_that_was_encoded(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("the red disc on the left of the blue square " * 4)
    assert result.truncated and len(result.instruction) < len("make the  red" + result.expression)
    assert result.instruction.startswith("make the the red disc")
    tokens = segmenter.model.tokenizer(result.instruction).input_ids
    assert len(tokens) <= segmenter.model.tokenizer.model_max_length


def test_integer_images_are_scaled_by_their_data(segmenter, picture):
    segmenter.set_image(picture)
    reference = segmenter.segment("the disc").scores
    as_list = picture.tolist()  # int64 once numpy reads it
    with pytest.warns(ImageScalingWarning, match="8-bit data"):
        segmenter.set_image(as_list)
    np.testing.assert_array_equal(segmenter.segment("the disc").scores, reference)
    twelve_bit = ((picture.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)
    with pytest.warns(ImageScalingWarning, match="12-bit data"):
        rgb = to_rgb_float(twelve_bit)
    np.testing.assert_allclose(rgb, to_rgb_float(picture), atol=1 / 4095)  # not at 6 % brightness
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full-range data: the dtype's own range, no warning
        assert to_rgb_float(np.array([[0, 65535]], np.uint16)).max() == 1.0
        assert to_rgb_float(picture).max() == np.float32(picture.max()) / np.float32(255)  # uint8: by 255 always
    with pytest.warns(ImageScalingWarning, match="negative values"):
        assert to_rgb_float(np.array([[-100, 0, 100]], np.int32)).tolist() == [[[0.0] * 3, [0.5] * 3, [1.0] * 3]]


def test_floats_inside_0_1_are_kept_as_they_are():
    image = np.array([[0.2, 0.6], [0.4, 0.3]], np.float32)
    np.testing.assert_array_equal(to_rgb_float(image)[..., 0], image)


def test_finite_extreme_floats_are_scaled_not_called_infinite(segmenter):
    image = np.zeros((20, 30), np.float32)
    image[:, 15:] = 3e38
    image[:, :5] = -3e38
    segmenter.set_image(image)
    assert segmenter.segment("the right half").mask.shape == (20, 30)
    assert to_rgb_float(np.array([[1e39, 0.0]]))[0, :, 0].tolist() == [1.0, 0.0]  # beyond float32, finite


# -- memory guards ------------------------------------------------------------------------
def test_a_resolution_that_cannot_fit_is_refused_before_anything_large_exists(segmenter, picture):
    """resolution=2048 on the tiny model once grew to 23 GB before the kernel killed it."""
    segmenter.set_image(picture)

    refused = pytest.raises(MemoryBudgetError, match="lower affinity_resolution .now 512. or resolution .now 2048.")
    with never_runs(segmenter.model.unet, segmenter.model.vae.encoder), refused as info:
        segmenter.segment("the disc", resolution=2048)
    assert "\n" not in str(info.value)
    assert segmenter.segment("the disc").mask.shape == picture.shape[:2]  # the segmenter is still usable


def test_a_picture_too_large_for_memory_is_refused_before_its_float_copy(segmenter):
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (200_000, 200_000, 3))  # no memory behind it
    with pytest.raises(MemoryBudgetError, match="200000x200000 image"):
        segmenter.set_image(huge)
    with pytest.raises(ValueError, match="set_image"):
        segmenter.segment("x")


# -- loading ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [None, 3, ""])
def test_a_model_that_is_not_text_is_refused(model):
    with pytest.raises(ValueError, match="model must be a hub id or a folder path"):
        EditSegmenter.from_pretrained(model)


def test_bad_settings_fail_before_the_weights_load():
    with pytest.raises(ValueError, match="setting 'seed'"):
        EditSegmenter.from_pretrained("someone/never-downloaded", seed=2**64)
    with pytest.raises(ValueError, match="device 'meta' is not one of"):
        EditSegmenter.from_pretrained("someone/never-downloaded", device="meta")


@pytest.fixture(scope="module")
def pickle_weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bin-weights")
    build_tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    return folder


def test_pickle_based_weights_load_only_when_allowed(pickle_weights_dir, picture):
    assert list(pickle_weights_dir.glob("unet/*.bin"))
    with pytest.raises(ValueError, match="no safetensors weights.*allow_pickle=True"):
        EditSegmenter.from_pretrained(str(pickle_weights_dir), device="cpu")
    segmenter = EditSegmenter.from_pretrained(str(pickle_weights_dir), device="cpu", allow_pickle=True)
    segmenter.set_image(picture)
    assert segmenter.segment("the disc").mask.shape == picture.shape[:2]


def test_a_truncated_weights_file_is_one_clear_error(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not load the model folder") as info:
        EditSegmenter.from_pretrained(str(broken), device="cpu")
    assert "\n" not in str(info.value) and info.value.__cause__ is None


def test_refine_leaves_the_segmentation_it_refines_unchanged(segmenter, picture):
    segmenter.set_image(picture)
    result = segmenter.segment("the disc")
    kept = {name: getattr(result, name).copy() for name in ("features", "prior_work", "mask", "scores")}
    segmenter.refine(result, positive=[(5, 5)], mask_threshold=0.2)
    for name, before in kept.items():
        np.testing.assert_array_equal(getattr(result, name), before)
    assert result.positive == () and result.settings.mask_threshold == 0.5


# -- issue 26: out of memory in one line; the estimate says what it needs and what is there ----------------
def test_a_refused_request_says_how_much_it_needs_and_how_much_is_free(segmenter, picture):
    segmenter.set_image(picture)
    with pytest.raises(MemoryBudgetError) as info:
        segmenter.segment("the disc", resolution=2048)
    assert re.fullmatch(r"this needs about [\d.]+ GiB \([\d.]+ GiB for .+\) but about [\d.]+ GiB are free on cpu: "
                        r"lower .+", str(info.value)), str(info.value)


@pytest.mark.parametrize("error, needs, where", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 21474836480 bytes. Error code 12 (Cannot allocate memory)"), "20.0 GiB", "cpu"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.1 "
                            "GiB of which 1.2 GiB is free."), "2.5 GiB", "cuda"),
    (MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000, 1000, 1000) and data type float64"),
     "7.4 GiB", "cpu"),
    (MemoryError(), "more memory than is free", "cpu"),
])
def test_out_of_memory_errors_become_the_guards_one_line(error, needs, where):
    line = str(memory_error_from(error))
    assert line.startswith("out of memory: this needs ") and needs in line and f" on {where}: lower resolution" in line
    assert "\n" not in line
    assert memory_error_from(RuntimeError("shape mismatch")) is None and memory_error_from(ValueError("x")) is None


@pytest.mark.parametrize("error, needs", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 21474836480 bytes."), "20.0 GiB"),
    (MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000, 1000, 1000) and data type float64"),
     "7.4 GiB"),
])
def test_out_of_memory_in_the_widget_is_the_guards_line_too(error, needs):
    """The widget's status words an error as the CLI does (was: "the run failed unexpectedly (RuntimeError)")."""
    from napari_editseg._workers import message

    text = message(error, "some/model")
    assert text.startswith(f"out of memory: this needs one more allocation of {needs} but ") and "\n" not in text


def test_a_real_cpu_out_of_memory_in_the_cli_is_one_line(tiny_model_dir, picture, tmp_path, capsys, monkeypatch):
    """torch's own CPU allocator error (a plain RuntimeError), raised by a real allocation of 1 PiB."""
    from skimage import io

    from napari_editseg.cli import main

    io.imsave(tmp_path / "in.png", picture, check_contrast=False)
    real_segment = EditSegmenter.segment

    def segment_then_allocate(self, *args, **kwargs):
        real_segment(self, *args, **kwargs)
        return torch.empty(2**50, dtype=torch.uint8)

    monkeypatch.setattr(EditSegmenter, "segment", segment_then_allocate)
    code = main(["segment", str(tmp_path / "in.png"), "the disc", "--model", str(tiny_model_dir),
                 "-o", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "out of memory: this needs one more allocation of 1048576.0 GiB but about" in err and "on cpu" in err


# -- the widget's latent cache: per model, never shared ----------------------------------------------------
def test_latents_cached_for_one_model_are_never_given_to_another(segmenter, picture, tmp_path):
    """Two models (other VAE weights), one plane: each gets the latents of its own VAE (the cache is
    keyed by model and content)."""
    from napari_editseg._runstate import Session

    build_tiny_pipeline(seed=1).save_pretrained(tmp_path / "other")
    other = EditSegmenter.from_pretrained(str(tmp_path / "other"), device="cpu")
    other.set_image(picture)
    own = {size: latents.clone() for size, latents in other.image_latents().items()}
    session = Session()
    session.set_plane(segmenter, picture)
    session.set_plane(other, picture)
    assert other.image_latents().keys() == own.keys()
    for size, latents in own.items():
        assert torch.equal(other.image_latents()[size], latents)
        assert not torch.equal(segmenter.image_latents()[size], latents)  # the test can tell them apart
