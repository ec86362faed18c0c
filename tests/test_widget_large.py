"""The dock on large and lazy data: a dask-backed multiscale layer segmented tile by tile (its plane
never read whole), and a 3-D stack segmented as one object. Real napari viewer, tiny model."""

import os
import sys

import numpy as np
import pytest

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    pytest.skip("no X display: run the suite with tools/run-tests (it uses Xvfb)", allow_module_level=True)

da = pytest.importorskip("dask.array")

from test_volume import moving_stack  # noqa: E402
from test_widget import make_widget, run, status  # noqa: E402, F401  (the fixture, shared)

from napari_editseg import _runstate  # noqa: E402
from napari_editseg._panels import ALL, OBJECT  # noqa: E402
from napari_editseg.testing import tiny_picture  # noqa: E402


def test_a_dask_multiscale_layer_is_segmented_tile_by_tile(make_widget, qtbot, segmenter, monkeypatch):  # noqa: F811

    def whole_plane(*_):
        raise AssertionError("the whole plane was read")

    monkeypatch.setattr(_runstate.Source, "plane", whole_plane)
    image = np.tile(tiny_picture(), (3, 3, 1))
    pyramid = [da.from_array(image, chunks=(32, 32, 3)), da.from_array(image[::2, ::2], chunks=(32, 32, 3))]
    viewer, widget = make_widget()
    widget.settings["tiling"].value = "always"
    viewer.add_image(pyramid, name="slide", multiscale=True, rgb=True)
    run(qtbot, widget, "red disc")
    assert "Error" not in status(widget)
    labels = viewer.layers["editseg slide"]
    assert labels.data.shape == (135, 180) and (labels.data == 1).any()
    result = widget.session.run.base[()]
    assert result.tiles and result.mask.shape == (135, 180)
    np.testing.assert_array_equal(labels.data == 1, result.mask)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_stack_is_segmented_as_one_object(make_widget, qtbot, lazy):  # noqa: F811
    stack = moving_stack(8)
    data = da.from_array(stack, chunks=(1, 45, 60, 3)) if lazy else stack
    viewer, widget = make_widget()
    viewer.add_image(data, name="stack", rgb=True)
    widget.settings["keep"].value = "all"
    widget.settings["mask_threshold"].value = 0.3
    widget.slices.value = OBJECT
    widget.axis.value = 0
    run(qtbot, widget, "red disc")
    assert "Error" not in status(widget)
    labels = viewer.layers["editseg stack"]
    painted = [z for z in range(8) if (labels.data[z] == 1).any()]
    followed = sorted(i[0] for i in widget.session.run.base)
    assert painted and painted == followed
    assert painted == list(range(painted[0], painted[-1] + 1))  # one object: contiguous planes, one id
    assert set(np.unique(labels.data)) == {0, 1}
    assert any(result.carried is not None for result in widget.session.run.base.values())


def test_a_stack_as_one_object_needs_words(make_widget, qtbot):  # noqa: F811
    viewer, widget = make_widget()
    viewer.add_image(moving_stack(3), name="stack", rgb=True)
    widget.slices.value = OBJECT
    run(qtbot, widget, "")
    assert "needs words" in status(widget) or "Type an expression" in status(widget)
    assert ALL != OBJECT


def test_a_plane_too_large_to_paint_in_memory_says_what_to_do_in_one_line(make_widget, qtbot):  # noqa: F811
    huge = da.zeros((60_000, 60_000), dtype=np.uint8, chunks=(4096, 4096))  # 13 GiB as a uint32 labels plane
    viewer, widget = make_widget()
    viewer.add_image(huge, name="mosaic")
    widget.expression.value = "red disc"
    widget.segment()
    text = status(widget)
    assert "--tile -o labels.zarr" in text and "GiB" in text and "\n" not in text
    assert widget._worker is None and "editseg mosaic" not in viewer.layers  # nothing started, nothing allocated
