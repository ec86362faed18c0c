"""Reading pictures from files: planes vs channels by an explicit rule, limits before decoding, long names.

Files are written the way users' tools write them (tifffile with and without ImageJ / OME metadata,
scikit-image, Pillow), and read back through the CLI where that is what users run."""

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_editseg.cli import main
from napari_editseg.files import PARTIAL, atomic_path, remove_partials, write_labels
from napari_editseg.image_files import MAX_IMAGE_PIXELS, image_layout, read_array, read_image

RNG = np.random.default_rng(26)
STACK = RNG.integers(0, 255, (4, 24, 30)).astype(np.uint8)  # four grey planes
RGB = RNG.integers(0, 255, (24, 30, 3)).astype(np.uint8)


def write(folder, name: str):
    """The files of the rule's table, by name."""
    path = folder / name
    writers = {
        "stack3.tif": lambda: tifffile.imwrite(path, STACK[:3]),  # tifffile: one planar page, tagged RGB
        "stack4.tif": lambda: tifffile.imwrite(path, STACK),
        "skimage3.tif": lambda: __import__("skimage.io").io.imsave(path, STACK[:3], check_contrast=False),
        "imagej-z.tif": lambda: tifffile.imwrite(path, STACK[:3], imagej=True, metadata={"axes": "ZYX"}),
        "pages.tif": lambda: [tifffile.imwrite(path, p, append=True, metadata=None) for p in STACK[:3]],
        "rgb.tif": lambda: tifffile.imwrite(path, RGB),
        "imagej-c.tif": lambda: tifffile.imwrite(path, STACK[:3], imagej=True, metadata={"axes": "CYX"}),
        "ome-zc.tif": lambda: tifffile.imwrite(path, np.stack([STACK[:3], STACK[1:]]), ome=True,
                                               metadata={"axes": "ZCYX"}),
        "grey-alpha.png": lambda: Image.fromarray(np.stack([STACK[0], STACK[1]], -1), "LA").save(path),
        "rgba.png": lambda: Image.fromarray(np.dstack([RGB, STACK[0]])).save(path),
        "palette.png": lambda: Image.fromarray(RGB).convert("P").save(path),
        "grey16.png": lambda: Image.fromarray(STACK[0].astype(np.uint16) * 257).save(path),
        "anim.gif": lambda: Image.fromarray(RGB).save(path, save_all=True, append_images=[
            Image.fromarray(np.roll(RGB, 5, axis=1)), Image.fromarray(np.roll(RGB, 9, axis=0))]),
    }
    writers[name]()
    return path


# file, what --plane / --channels are needed, what the picture is (a function of the written data)
TABLE = [
    ("stack3.tif", "S=3 Y=24 X=30", {"plane": (1,)}, lambda: STACK[1]),
    ("stack4.tif", "S=4 Y=24 X=30", {"plane": (3,)}, lambda: STACK[3]),
    ("skimage3.tif", "S=3 Y=24 X=30", {"plane": (2,)}, lambda: STACK[2]),
    ("imagej-z.tif", "Z=3 Y=24 X=30", {"plane": (2,)}, lambda: STACK[2]),
    ("pages.tif", "I=3 Y=24 X=30", {"plane": (1,)}, lambda: STACK[1]),
    ("rgb.tif", "Y=24 X=30 S=3", {}, lambda: RGB),
    ("imagej-c.tif", "C=3 Y=24 X=30", {"channels": (1,)}, lambda: STACK[1]),
    ("ome-zc.tif", "Z=2 C=3 Y=24 X=30", {"plane": (1,), "channels": (2, 1, 0)},
     lambda: np.stack([STACK[3], STACK[2], STACK[1]], -1)),
    ("grey-alpha.png", "Y=24 X=30 S=2", {}, lambda: STACK[0]),
    ("rgba.png", "Y=24 X=30 S=4", {}, lambda: RGB),
    ("palette.png", "Y=24 X=30 S=3", {}, None),
    ("grey16.png", "Y=24 X=30", {}, lambda: STACK[0].astype(np.uint16) * 257),
    ("anim.gif", "T=3 Y=24 X=30 S=3", {"plane": (0,)}, None),
]


@pytest.mark.parametrize("name, axes, options, expected", TABLE, ids=[row[0] for row in TABLE])
def test_planes_and_channels_follow_the_rule(tmp_path, name, axes, options, expected):
    path = write(tmp_path, name)
    assert image_layout(path).describe() == axes
    picture = read_image(path, **options)
    if expected is not None:
        assert picture.dtype == expected().dtype and np.array_equal(picture, expected())
    else:  # lossy palette and GIF: the shape and that it is colour
        assert picture.shape == (24, 30, 3)
    for missing in options:  # every option the table gives is needed
        with pytest.raises(ValueError, match=f"--{missing}"):
            read_image(path, **{k: v for k, v in options.items() if k != missing})


def test_a_stack_of_three_or_four_grey_planes_is_never_segmented_as_one_colour_picture(tmp_path, segmenter,
                                                                                       tiny_model_dir, capsys):
    """The issue's case: tifffile's (and scikit-image's) way of writing a numpy stack tags it RGB; napari
    shows it as planes, and so does this. Without --plane: one line; with it: exactly that plane."""
    for name in ("stack3.tif", "stack4.tif"):
        path = write(tmp_path, name)
        args = ["segment", str(path), "the bright spot", "--model", str(tiny_model_dir), "-o", str(tmp_path / "m.tif")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "planes" in err and "--plane" in err and err.count("\n") == 1
        assert main(args + ["--plane", "2"]) == 0
        segmenter.set_image(STACK[2])
        assert np.array_equal(read_image(tmp_path / "m.tif") > 0, segmenter.segment("the bright spot").mask)


@pytest.mark.parametrize("argv, message", [
    (["--plane", "7"], "is not a plane of"), (["--plane", "a"], "give whole numbers"),
    (["--plane", "-1"], "give whole numbers"), (["--plane", "0", "--channels", "0,1"], "give one or three"),
    (["--plane", "0", "--channels", "5"], "give one or three"),
])
def test_bad_plane_and_channel_options_are_one_line_before_the_model_loads(tmp_path, argv, message, capsys):
    path = write(tmp_path, "ome-zc.tif")
    code = main(["segment", str(path), "x", "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "m.png"),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def bomb_gif(path, side: int, frames: int) -> None:
    """An animation of ``frames`` frames of side × side pixels, almost all of them unchanged: a few kB."""
    first = Image.new("P", (side, side), 0)
    deltas = []
    for k in range(1, frames):
        frame = first.copy()
        frame.putpixel((k % side, 0), 1 + k % 200)
        deltas.append(frame)
    first.save(path, save_all=True, append_images=deltas, optimize=False)


def test_an_animation_that_decodes_to_a_gigabyte_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    """60 kB on disk, ~1 GB decoded: the header says frames × size; nothing is decoded to find out."""
    path = tmp_path / "bomb.gif"
    bomb_gif(path, 4096, 20)  # 20 × 16.8 M = 335 M pixels (1 GB as RGB)
    assert path.stat().st_size < 100_000
    assert image_layout(path).planes * 4096 * 4096 > MAX_IMAGE_PIXELS

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "convert", no_decoding)
    with pytest.raises(ValueError, match="would decode to 20 planes of 4096x4096 = 336 M pixels"):
        read_array(path)
    with pytest.raises(ValueError, match="holds 20 planes"):
        read_image(path)
    assert main(["segment", str(path), "x", "--model", str(tmp_path / "none"), "-o", str(tmp_path / "m.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_huge_stack_decodes_only_the_plane_asked_for(tmp_path, monkeypatch):
    """300 compressed pages of 1000 × 1000 (300 M pixels, a few hundred kB): one page is read, never the series."""
    path = tmp_path / "deep.tif"
    plane = np.zeros((1000, 1000), np.uint8)
    with tifffile.TiffWriter(path) as writer:
        for z in range(300):
            plane[0, 0] = z % 251
            writer.write(plane, compression="zlib", metadata=None)
    layout = image_layout(path)
    assert layout.describe() == "I=300 Y=1000 X=1000" and layout.planes * layout.plane_pixels > MAX_IMAGE_PIXELS
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("the series was decoded"))
    assert read_image(path, plane=(123,))[0, 0] == 123
    with pytest.raises(ValueError, match="more than the 268 M"):
        read_array(path)


def leave_partial(path):
    """What a kill while ``path`` is written leaves behind: its temporary file."""
    keep = path.parent / "kept-temporary"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"half")
            os.link(temporary, keep)
            raise RuntimeError("killed")
    os.replace(keep, temporary)
    return temporary


def test_long_legal_file_names_are_written_and_their_leftovers_found(tmp_path):
    """A 255-byte name (legal) once failed: the temporary name beside it was longer than a name may be.
    Leftovers are found by name, never by a glob pattern (names may hold [, * and ?)."""
    long_name = tmp_path / ("é" * 125 + "x.tif")  # 255 bytes in UTF-8
    odd_name = tmp_path / "a[1]*?.tif"
    assert len(long_name.name.encode()) == 255
    for path in (long_name, odd_name):
        write_labels(path, np.ones((4, 4), np.uint8))
        assert read_image(path).sum() == 16
        leftover = leave_partial(path)
        assert len(leftover.name.encode()) <= 255 and leftover.exists()
        remove_partials(tmp_path / "a1xx.tif")  # another file's: not these
        assert leftover.exists()
        remove_partials(path)
        assert not leftover.exists() and path.exists()
    assert not [p for p in tmp_path.iterdir() if PARTIAL in p.name]
