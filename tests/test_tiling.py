"""Large images, coarse to fine (core/tiling.py): which tiles run, what comes back, and that the image
is read region by region. Real forwards of the tiny model; nothing is mocked."""

import threading

import numpy as np
import pytest

from napari_editseg.core import tiling
from napari_editseg.core.image import to_rgb_float
from napari_editseg.core.tiling import Cancelled, ImageSource, segment_tiled, tile_boxes, tiling_applies
from napari_editseg.testing import tiny_picture


def big_picture() -> np.ndarray:
    """135×180: the tiny picture three times down and across (tiles of 32 pixels for the tiny model)."""
    return np.tile(tiny_picture(), (3, 3, 1))


class Recorded:
    """An array that slices like numpy and records each region read; reading it whole is refused."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, index):
        part = self.data[index]
        self.reads.append(part.shape[:2])
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def test_tiles_cover_the_image_and_share_the_overlap():
    tiles = tile_boxes((100, 70), 32, 8)
    covered = np.zeros((100, 70), int)
    for r0, c0, r1, c1 in tiles:
        assert (r1 - r0, c1 - c0) == (32, 32)
        covered[r0:r1, c0:c1] += 1
    assert covered.min() >= 1
    assert {t[0] for t in tiles} == {0, 24, 48, 68}  # stride 24, the last flush with the edge
    assert tile_boxes((20, 30), 32, 8) == [(0, 0, 20, 30)]


def test_auto_tiles_only_large_images(segmenter):
    settings = segmenter.resolve_settings()
    assert settings.tiling == "auto"
    assert not tiling_applies(settings, (2048, 2048)) and tiling_applies(settings, (2049, 100))
    assert tiling_applies(segmenter.resolve_settings(tiling="always"), (10, 10))
    assert not tiling_applies(segmenter.resolve_settings(tiling="off"), (99999, 99999))
    # the tiny model's 32-px tiles would need over 4,096 tiles for a 3000×4000 photo (and 2049×2049):
    # auto resizes those; 2049×100 takes 344 tiles
    assert not tiling_applies(settings, (3000, 4000)) and not tiling_applies(settings, (2049, 2049))


def test_tiling_runs_the_tiles_at_full_resolution_and_stitches_one_mask(segmenter, count_rows):
    image = big_picture()
    segmenter.set_image(image)
    with count_rows(segmenter.model.unet) as unet:
        tiled = segmenter.segment("red disc", tiling="always", prior_source="attention")
    assert tiled.tiles and tiled.mask.shape == tiled.scores.shape == image.shape[:2]
    assert unet.calls == 1 + len(tiled.tiles)  # the coarse pass, then one forward per visited tile
    assert all((r1 - r0, c1 - c0) == (32, 32) for r0, c0, r1, c1 in tiled.tiles)
    with count_rows(segmenter.model.unet) as unet:
        resized = segmenter.segment("red disc", tiling="off", prior_source="attention")
    assert unet.calls == 1 and not resized.tiles
    assert np.abs(tiled.scores - resized.scores).max() > 0.05
    with pytest.raises(ValueError, match="stitched from tiles"):
        segmenter.refine(tiled, positive=[(10, 10)])
    with pytest.raises(ValueError, match="threshold it again"):
        segmenter.refine(tiled, fg_quantile=0.8)
    assert segmenter.refine(tiled, fg_quantile=tiled.settings.fg_quantile) is tiled  # nothing changed
    lower = segmenter.refine(tiled, mask_threshold=0.1, keep="all")
    np.testing.assert_array_equal(lower.mask, tiled.scores >= 0.1)


def test_an_image_smaller_than_the_overview_is_still_read_by_region(segmenter):
    """tiling "always" on a small image (the dock's tiles control): its overview is the image itself, taken
    by slicing — np.asarray of a lazy plane gave a 0-d array and the run failed."""
    recorded = Recorded(tiny_picture())
    tiled = segment_tiled(segmenter, recorded, "red disc", tiling="always", tile_size=512)
    assert tiled.full_mask().shape == recorded.shape[:2] and recorded.reads


def test_tile_size_sets_the_pixels_a_tile_covers_and_each_tile_is_resized_for_its_forward(segmenter, count_rows):
    image, sides = big_picture(), []
    hook = segmenter.model.unet.register_forward_pre_hook(lambda _m, args: sides.append(args[0].shape[-2:]))
    try:
        with count_rows(segmenter.model.unet) as unet:
            tiled = segment_tiled(segmenter, image, "red disc", tiling="always", tile_size=64, tile_overlap=0.25,
                                  prior_source="attention")
    finally:
        hook.remove()
    assert tiled.tiles and all((r1 - r0, c1 - c0) == (64, 64) for r0, c0, r1, c1 in tiled.tiles)
    assert {t[0] for t in tiled.tiles} <= {0, 48, 71}  # stride 48, the last flush with the edge
    assert unet.calls == 1 + len(tiled.tiles)
    assert set(sides[1:]) == {(16, 16)}  # each 64-px tile resized to the 32-px resolution (latent side 16)
    assert tiled.full_mask().shape == image.shape[:2]
    # auto counts the tiles of that size: 128-px tiles cover a 3000×4000 photo in 35×47, so it is tiled
    assert tiling_applies(segmenter.resolve_settings(tile_size=128), (3000, 4000))
    assert not tiling_applies(segmenter.resolve_settings(tile_size=1024), (3000, 4000))  # under 4 tile sides


def test_a_box_confines_the_tiles_and_the_mask(segmenter):
    image = big_picture()
    box = (10, 20, 50, 60)
    everywhere = segment_tiled(segmenter, image, "red disc", tiling="always", keep="all", mask_threshold=0.0)
    boxed = segment_tiled(segmenter, image, "red disc", box=box, tiling="always", keep="all", mask_threshold=0.0)
    assert 0 < len(boxed.tiles) < len(tile_boxes(image.shape, 32, 8))
    assert all(t[0] < box[2] and box[0] < t[2] and t[1] < box[3] and box[1] < t[3] for t in boxed.tiles)
    full = boxed.full_mask()
    assert full[10:50, 20:60].all() and full.sum() == 40 * 40  # threshold 0: the whole box, nothing outside
    assert everywhere.full_mask().sum() > full.sum()


def test_the_image_is_read_tile_by_tile_never_whole(segmenter, monkeypatch):
    monkeypatch.setattr(tiling, "BAND_PIXELS", 60 * 180)  # overview bands of 60 rows
    lazy = Recorded(big_picture())
    result = segment_tiled(segmenter, lazy, "red disc", tiling="always")
    assert result.full_mask().shape == (135, 180)
    assert max(r * c for r, c in lazy.reads) <= 60 * 180
    assert lazy.reads.count((32, 32)) == len(result.tiles)


def test_a_pyramid_gives_the_overview_from_its_coarse_level(segmenter):
    image = big_picture()
    fine, coarse = Recorded(image), Recorded(image[::2, ::2])
    result = segment_tiled(segmenter, [fine, coarse], "red disc", tiling="always")
    assert coarse.reads and all(shape == (32, 32) for shape in fine.reads)
    assert len(fine.reads) == len(result.tiles)


def test_tiles_are_scaled_by_the_whole_images_range():
    data = np.zeros((4, 4), np.uint16)
    data[0, 0] = 4000  # 12-bit data: the tile without that pixel must not be scaled by its own maximum
    source = ImageSource(data)
    assert source.value_range == (0.0, 4000.0)
    tile = data[2:4, 2:4].copy()
    tile[0, 0] = 1000
    assert to_rgb_float(tile, source.value_range)[0, 0, 0] == pytest.approx(1000 / 4095)


def test_progress_per_tile_and_cancel_between_tiles(segmenter):
    seen, cancelled = [], threading.Event()

    def progress(done, total):
        seen.append((done, total))
        cancelled.set()

    with pytest.raises(Cancelled):
        segment_tiled(segmenter, big_picture(), "red disc", progress=progress, cancelled=cancelled, tiling="always")
    assert len(seen) == 1 and seen[0][0] == 1
