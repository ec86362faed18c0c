"""``napari-editseg objects``: an instance label image and its CSV, from words, exemplars or everything."""

import csv

import numpy as np
import pytest
from skimage import io

from napari_editseg.cli import main


@pytest.fixture()
def picture_file(tmp_path, picture):
    path = tmp_path / "picture.png"
    io.imsave(path, picture, check_contrast=False)
    return path


def read_table(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("mode", ["words", "everything"])
def test_objects_writes_labels_and_a_table_that_agree(tiny_model_dir, picture_file, tmp_path, mode, capsys):
    out = tmp_path / "objects.tif"
    extra = ["the disc", "--set", "min_instance_size=1", "--set", "mask_threshold=0"] if mode == "words" else [
        "--everything", "--set", "granularity=4"]
    code = main(["objects", str(picture_file), *extra, "--model", str(tiny_model_dir), "--device", "cpu",
                 "-o", str(out)])
    assert code == 0
    labels = io.imread(out)
    rows = read_table(tmp_path / "objects.csv")
    assert list(rows[0]) == ["id", "area", "centroid_row", "centroid_col", "score"]
    assert len(rows) == labels.max() >= 1 and f"{len(rows)} " in capsys.readouterr().out
    for row in rows:
        where = labels == int(row["id"])
        assert int(row["area"]) == where.sum()
        assert abs(float(row["centroid_row"]) - np.argwhere(where)[:, 0].mean()) < 0.01
        assert 0 <= float(row["score"]) <= 1
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)


def test_objects_like_exemplars_leaves_every_painted_label_out(tiny_model_dir, picture_file, picture, tmp_path):
    painted = np.zeros(picture.shape[:2], np.uint16)
    painted[5:15, 5:15], painted[25:35, 40:50] = 4, 7
    io.imsave(tmp_path / "painted.png", painted, check_contrast=False)
    code = main(["objects", str(picture_file), "--like", str(tmp_path / "painted.png"), "--ids", "4",
                 "--set", "mask_threshold=0", "--set", "min_instance_size=1", "--set", "exemplar_size=0",
                 "--model", str(tiny_model_dir),
                 "-o", str(tmp_path / "more.npy"), "--csv", str(tmp_path / "more.csv")])
    labels = np.load(tmp_path / "more.npy")
    assert code == 0 and labels.max() >= 1 and not labels[painted > 0].any()
    assert len(read_table(tmp_path / "more.csv")) == labels.max()


@pytest.mark.parametrize("args, message", [
    ([], "give an expression"),
    (["the disc", "--everything"], "takes no expression"),
    (["--like", "x.png"], "go together"),
    (["--like", "x.png", "--ids", "a"], "label ids 'a'"),
    (["the disc", "-o", "o.jpg"], "lossless"),
])
def test_objects_refuses_contradictions_in_one_line(tiny_model_dir, picture_file, tmp_path, args, message, capsys):
    code = main(["objects", str(picture_file), *args, "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_objects_takes_a_sample_picture_as_segment_does(tmp_path, capsys):
    # a newcomer's first try after the README: the demo model on the shapes sample, no file
    out = tmp_path / "circles.tif"
    code = main(["objects", "--sample", "shapes", "red circle", "--model", "shapes-world-demo", "--device", "cpu",
                 "-o", str(out)])
    assert code == 0 and io.imread(out).shape == (64, 64) and (tmp_path / "circles.csv").exists()
    assert main(["objects", "--sample", "shapes", str(out), "red circle", "-o", str(tmp_path / "x.tif")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["objects", "red circle", "-o", str(tmp_path / "y.tif")]) != 0  # no picture: one line, no crash
