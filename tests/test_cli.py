import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage import io

from napari_editseg.cli import main
from napari_editseg.core.settings import SETTING_NAMES


@pytest.fixture()
def picture_file(tmp_path, picture):
    path = tmp_path / "picture.png"
    io.imsave(path, picture, check_contrast=False)
    return path


def test_segment_writes_a_mask_overlay_and_maps(tiny_model_dir, picture_file, tmp_path, capsys):
    out = tmp_path / "out" / "disc.png"
    code = main(["segment", str(picture_file), "the red disc", "--model", str(tiny_model_dir), "--device", "cpu",
                 "-o", str(out), "--overlay", str(tmp_path / "overlay.png"), "--scores", str(tmp_path / "s.npy"),
                 "--prior", str(tmp_path / "p.npy"), "--set", "mask_threshold=0.4", "--set", "keep=peak"])
    assert code == 0
    mask = io.imread(out)
    assert mask.shape == (45, 60) and set(np.unique(mask)) <= {0, 255}
    scores = np.load(tmp_path / "s.npy")
    assert scores.shape == (45, 60) and scores.dtype == np.float32
    assert np.load(tmp_path / "p.npy").shape == (45, 60)
    assert io.imread(tmp_path / "overlay.png").shape == (45, 60, 3)
    assert "the red disc" in capsys.readouterr().out


def test_segment_prints_the_confidence_and_says_when_nothing_was_found(tiny_model_dir, picture_file, tmp_path,
                                                                      capsys):
    # on the tiny model "the disc" gets a confidence of about 0.42 (two regions compete)
    args = ["segment", str(picture_file), "the disc", "--model", str(tiny_model_dir), "-o", str(tmp_path / "m.png")]
    assert main(args) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "confidence 0.42" in line and "nothing found" not in line
    assert main(args + ["--set", "min_confidence=0.5"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "confidence 0.42 - nothing found (below min_confidence 0.5)" in line
    assert (tmp_path / "m.png").exists()  # the mask is still written: the user decides


def test_several_expressions_write_one_mask_each_from_one_image_encode(tiny_model_dir, picture_file, tmp_path):
    code = main(["segment", str(picture_file), "-e", "the disc", "-e", "the square", "--model",
                 str(tiny_model_dir), "-o", str(tmp_path / "m.tif")])
    assert code == 0
    for i in (1, 2):
        assert io.imread(tmp_path / f"m-{i}.tif").shape == (45, 60)


def test_a_sample_picture_needs_no_file(tiny_model_dir, tmp_path):
    code = main(["segment", "--sample", "coins", "the coin at the top left", "--model", str(tiny_model_dir),
                 "-o", str(tmp_path / "coin.png")])
    assert code == 0
    assert io.imread(tmp_path / "coin.png").shape == (303, 384)


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "missing.png", "x"], "does not exist"),
        (["segment", "{picture}", "   "], "empty"),
        (["segment", "{picture}"], "at least one expression"),
        (["segment", "{picture}", "x", "--set", "treshold=1"], "unknown setting 'treshold'"),
        (["segment", "{picture}", "x", "--set", "mask_threshold=high"], "not a number"),
        (["segment", "{picture}", "x", "--set", "temperature"], "NAME=VALUE"),
        (["segment", "{unreadable}", "x"], "could not read"),
        (["segment", "--sample", "moonbase", "x"], "unknown sample"),
        (["segment", "{picture}", "x", "--model", "{nowhere}"], "does not exist"),
        (["segment", "{picture}", "x", "--set", "prior_resolutions=5"], "no attention layer works at latent side 5"),
        (["segment", "{picture}", "x", "-o", "{picture}"], "is an input file"),
        (["segment", "{picture}", "x", "-o", "{tmp}/x.png", "--overlay", "{tmp}/x.png"], "same file"),
        (["segment", "{picture}", "x", "-o", "{tmp}/m.jpg"], "use .png, .tif, .tiff, .npy (a mask must be lossless)"),
        (["segment", "{picture}", "x", "--scores", "{tmp}/s.txt"], "use .npy"),
        (["segment", "{picture}", "x", "-o", "{tmp}/folder.png"], "is a folder"),
        (["segment", "{picture}", "x", "-o", "{picture}/m.png"], "is not a writable folder"),  # a file on the way
        (["segment", "{picture}", "x", "--device", "meta"], "device 'meta' is not one of"),
        (["segment", "{picture}", "caf\udcff"], "not valid UTF-8"),
        (["segment", "{picture}", "x", "--sample", "shapes"], "not both"),
        (["segment", "{picture}", "x", "--set", "fg_quantile=0.3"], "contradict each other"),
        (["segment", "{picture}", "x", "--model", "{truncated}"], "could not load the model folder"),
        (["segment", "{picture}", "x", "--model", "{pickled}"], "--allow-pickle-weights"),
        (["segment", "{huge}", "x"], "more than the 268 M"),
        (["eval", "--data-root", "{tmp}", "--dataset", "refcoco", "--split", "val", "--out", "{tmp}"], "is a folder"),
    ],
)
def test_bad_input_gives_one_line_and_a_non_zero_exit(args, message, picture_file, tiny_model_dir, model_variants,
                                                      tmp_path, capsys):
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not a png at all")
    (tmp_path / "folder.png").mkdir()
    huge = tmp_path / "huge.tif"  # a header saying 20000 x 20000 x 3 (the data would be 1.2 GB, 8.9 GiB as float)
    tifffile.imwrite(huge, shape=(20000, 20000, 3), dtype=np.uint8)
    names = {"picture": picture_file, "unreadable": unreadable, "nowhere": tmp_path / "no-model", "tmp": tmp_path,
             "huge": huge, **model_variants}
    argv = [a.format(**names) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(tiny_model_dir)]
    before = picture_file.read_bytes()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert picture_file.read_bytes() == before  # never overwritten


@pytest.fixture(scope="module")
def model_variants(tmp_path_factory):
    """A model folder with a truncated text-encoder file, and one with pickle-based weights only."""
    from napari_editseg.testing import build_tiny_pipeline

    root = tmp_path_factory.mktemp("variants")
    pipeline = build_tiny_pipeline()
    pipeline.save_pretrained(root / "truncated")
    weights = root / "truncated" / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    pipeline.save_pretrained(root / "pickled", safe_serialization=False)
    return {"truncated": root / "truncated", "pickled": root / "pickled"}


def test_every_output_is_checked_before_the_model_loads(picture_file, tmp_path, capsys):
    code = main(["segment", str(picture_file), "x", "--model", str(tmp_path / "no-model"),
                 "-o", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "m.png")])
    assert code == 2 and "same file" in capsys.readouterr().err  # not the missing model


def test_outputs_land_in_new_folders_and_npy_masks_are_real_npy(tiny_model_dir, picture_file, tmp_path):
    code = main(["segment", str(picture_file), "the disc", "--model", str(tiny_model_dir), "-o",
                 str(tmp_path / "a" / "m.npy"), "--overlay", str(tmp_path / "b" / "c" / "o.jpg")])
    assert code == 0
    mask = np.load(tmp_path / "a" / "m.npy")
    assert mask.dtype == bool and mask.shape == (45, 60)
    assert io.imread(tmp_path / "b" / "c" / "o.jpg").shape == (45, 60, 3)


def test_a_12_bit_tiff_is_scaled_by_its_data_with_a_one_line_warning(tiny_model_dir, picture, tmp_path, capsys):
    twelve_bit = ((picture.astype(np.uint32) * 4095) // 255).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", twelve_bit)
    assert main(["segment", str(tmp_path / "in.tif"), "the disc", "--model", str(tiny_model_dir),
                 "-o", str(tmp_path / "m.png")]) == 0
    err = capsys.readouterr().err
    assert "napari-editseg: warning: uint16 image holds values up to" in err and "12-bit data" in err
    assert "warnings.warn" not in err


def test_running_out_of_memory_is_one_line(tiny_model_dir, picture_file, tmp_path, capsys, monkeypatch):
    """A real CUDA out-of-memory cannot be produced here: the error is raised where it would arise."""
    import torch

    from napari_editseg.core.segmenter import EditSegmenter

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(EditSegmenter, "segment", out_of_memory)
    code = main(["segment", str(picture_file), "x", "--model", str(tiny_model_dir), "-o", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "out of memory: this needs one more allocation of 20.0 GiB" in err and "lower resolution" in err
    assert not (tmp_path / "m.png").exists()


def test_missing_weights_end_in_one_clear_line_in_a_real_process(picture_file):
    done = subprocess.run(
        [sys.executable, "-m", "napari_editseg.cli", "segment", str(picture_file), "the disc",
         "--model", "someone/not-downloaded-model"],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert done.returncode == 3
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "someone/not-downloaded-model" in done.stderr and "not available" in done.stderr


def test_help_documents_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    for name in SETTING_NAMES:
        assert f"  {name} [" in text
    assert "mask_threshold [0.5]" in text and "instruction_template [make the {} red]" in text


@pytest.mark.parametrize("how", ["hard link", "symlink", "symlinked folder"])
def test_no_output_is_the_input_under_another_name(picture_file, tmp_path, how, capsys):
    """Written atomically, a mask would replace the link, not the picture; still it is refused, as the
    user meant another file."""
    import os

    if how == "hard link":
        output = tmp_path / "mask.png"
        os.link(picture_file, output)
    elif how == "symlink":
        output = tmp_path / "mask.png"
        output.symlink_to(picture_file)
    else:
        (tmp_path / "again").symlink_to(picture_file.parent)
        output = tmp_path / "again" / picture_file.name
    before = picture_file.read_bytes()
    code = main(["segment", str(picture_file), "x", "--model", str(tmp_path / "no-model"), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and "is an input file" in err and err.count("\n") == 1
    assert picture_file.read_bytes() == before
