"""Large images from files (large.py) and ``segment --tile``: OME-Zarr and TIFF read region by region,
masks written to zarr tile by tile."""

import numpy as np
import pytest
import tifffile

from napari_editseg.cli import main
from napari_editseg.large import open_levels

zarr = pytest.importorskip("zarr")


def ome_zarr(path, image):
    """A two-level OME-Zarr of an H×W×3 image, stored channel-first as OME-Zarr keeps it."""
    group = zarr.open_group(str(path), mode="w")
    data = np.moveaxis(image, -1, 0)
    group.create_array("0", data=data, chunks=(3, 32, 32))
    group.create_array("1", data=np.ascontiguousarray(data[:, ::2, ::2]), chunks=(3, 32, 32))
    group.attrs["multiscales"] = [{"axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                                            {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0"}, {"path": "1"}]}]
    return path


def test_an_ome_zarr_opens_as_lazy_levels_with_the_channels_last(tmp_path, picture):
    image = np.tile(picture, (2, 2, 1))
    levels = open_levels(ome_zarr(tmp_path / "big.ome.zarr", image))
    assert [level.shape for level in levels] == [(90, 120, 3), (45, 60, 3)]
    np.testing.assert_array_equal(levels[0][10:40, 50:70], image[10:40, 50:70])


def test_a_tiff_stack_needs_a_plane_and_gives_it(tmp_path, picture):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([picture[..., 0], picture[..., 1]]))
    with pytest.raises(ValueError, match="plane"):
        open_levels(path)
    (level,) = open_levels(path, plane=(1,))
    np.testing.assert_array_equal(level[5:9, 0:60], picture[5:9, :, 1])


def test_segment_tile_reads_ome_zarr_and_writes_a_zarr_mask(tiny_model_dir, tmp_path, picture, capsys):
    image = np.tile(picture, (3, 3, 1))
    source = ome_zarr(tmp_path / "big.ome.zarr", image)
    out = tmp_path / "mask.zarr"
    code = main(["segment", str(source), "red disc", "--tile", "--model", str(tiny_model_dir), "-o", str(out),
                 "--set", "keep=all", "--set", "mask_threshold=0.3"])
    assert code == 0
    mask = zarr.open_array(str(out), mode="r")
    assert mask.shape == (135, 180) and mask.dtype == np.uint8
    assert set(np.unique(mask[:])) <= {0, 1} and mask[:].any()
    assert "tile(s) at full resolution" in capsys.readouterr().out


def test_segment_tile_takes_the_tile_size_from_set(tiny_model_dir, tmp_path, picture, capsys):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.tile(picture, (3, 3, 1)))
    out = tmp_path / "mask.tif"
    assert main(["segment", str(path), "red disc", "--tile", "--model", str(tiny_model_dir), "-o", str(out),
                 "--set", "tile_size=64"]) == 0
    printed = capsys.readouterr().out
    assert "tile(s) of 64 px" in printed and tifffile.imread(out).shape == (135, 180)


def test_segment_tile_takes_a_tiff_and_writes_a_tiff(tiny_model_dir, tmp_path, picture):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.tile(picture, (2, 2, 1)), tile=(32, 32))
    out = tmp_path / "mask.tif"
    assert main(["segment", str(path), "red disc", "--tile", "--model", str(tiny_model_dir), "-o", str(out)]) == 0
    assert tifffile.imread(out).shape == (90, 120)


@pytest.mark.parametrize("extra, message", [
    (["--tile", "--overlay", "o.png"], "leave them out with --tile"),
    ([], "read region by region with --tile"),
    (["-o", "m.zarr"], ".zarr with --tile"),
])
def test_tiling_options_are_refused_in_one_line(tmp_path, picture, extra, message, capsys):
    source = ome_zarr(tmp_path / "big.ome.zarr", picture)
    args = ["segment", str(source), "red disc", "--model", "no-such-model"]
    code = main(args + [e if not e.endswith((".png", ".zarr")) else str(tmp_path / e) for e in extra])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_without_zarr_a_tiled_tiff_says_which_extra_to_install(tmp_path, picture, monkeypatch):
    import sys

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.tile(picture, (2, 2, 1)), tile=(32, 32))
    monkeypatch.setitem(sys.modules, "zarr", None)  # as on a machine without the [large] extra
    with pytest.raises(ValueError, match=r"TIFF or zarr image tile by tile.*napari-editseg\[large\]"):
        open_levels(path)
