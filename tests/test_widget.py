"""The dock widget in a real napari viewer, on the tiny random-weight model.

napari needs OpenGL to add image layers, so these run under an X display
(``tools/run-tests`` starts Xvfb); without one they skip and say so.
"""

import os
import sys
import time

import numpy as np
import pytest

if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    pytest.skip("no X display: run the suite with tools/run-tests (it uses Xvfb)", allow_module_level=True)

from napari_editseg import _layers  # noqa: E402
from napari_editseg._widget import (
    ALL,
    CLICKS_LAYER,
    NEGATIVE,
    POSITIVE,
    PRIOR_LAYER,
    SCORES_LAYER,
    EditSegWidget,  # noqa: E402
)


@pytest.fixture()
def make_widget(make_napari_viewer, segmenter, tiny_model_dir):
    def make(model_loaded=True):
        viewer = make_napari_viewer()
        widget = EditSegWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.model.value = str(tiny_model_dir)
        widget.device.value = "cpu"
        if model_loaded:  # the model is loaded once per session and reused, as the widget does
            widget._segmenters[widget._key()] = segmenter
        return viewer, widget
    return make


def wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def run(qtbot, widget, expression="the red disc"):
    widget.expression.value = expression
    widget.segment()
    wait(qtbot, widget)


def test_the_widget_builds_and_lists_layers(make_widget, picture):
    viewer, widget = make_widget()
    assert widget.image.choices == ()
    viewer.add_image(picture, name="pic")
    assert widget.image.choices == ("pic",)
    viewer.add_image(picture[..., 0], name="red")
    viewer.add_image(picture[..., 1], name="green")
    assert _layers.COMPOSITE in widget.image.choices
    viewer.add_labels(np.zeros((45, 60), np.uint32), name="mine")
    assert widget.labels.choices[-1] == "mine"
    assert widget.slices.native.isHidden()  # 2-D image: nothing to slice


def test_a_run_writes_a_label_that_undo_takes_back(make_widget, picture, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(picture, name="pic")
    widget.show_prior.value = widget.show_scores.value = True
    run(qtbot, widget)
    labels = viewer.layers["editseg pic"]
    assert labels.data.shape == (45, 60) and set(np.unique(labels.data)) == {0, 1}
    assert "Label 1" in widget.status.value
    table = labels.features
    assert list(table["index"]) == [1] and list(table["expression"]) == ["the red disc"]
    assert labels.metadata["editseg"][0]["expression"] == "the red disc"
    assert viewer.layers[PRIOR_LAYER].data.shape == (45, 60) and SCORES_LAYER in viewer.layers
    run(qtbot, widget, "the blue square")  # the next expression gets the next free id
    assert 2 in labels.data and list(labels.features["index"]) == [1, 2]
    labels.undo()
    assert 2 not in labels.data and 1 in labels.data
    labels.undo()
    assert not labels.data.any()


def test_other_labels_are_kept_unless_overwrite_is_ticked(make_widget, picture, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(picture, name="pic")
    mine = np.full((45, 60), 7, np.uint32)
    mine[:, 30:] = 0
    viewer.add_labels(mine.copy(), name="mine")
    widget.labels.value = "mine"
    widget.mask_threshold.value = 0.0  # everything is foreground: the run wants every pixel
    run(qtbot, widget)
    labels = viewer.layers["mine"]
    assert (labels.data[:, :30] == 7).all() and (labels.data[:, 30:] == 8).all()
    assert "kept" in widget.status.value
    widget.overwrite.value = True
    run(qtbot, widget, "all of it")
    assert (labels.data == 9).all()


def test_the_selected_label_policy(make_widget, picture, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(picture, name="pic")
    labels = viewer.add_labels(np.zeros((45, 60), np.uint32), name="mine")
    labels.selected_label = 42
    widget.labels.value = "mine"
    widget.label_policy.value = widget.label_policy.choices[1]
    run(qtbot, widget)
    assert set(np.unique(labels.data)) <= {0, 42} and 42 in labels.data


def test_the_gui_keeps_running_during_a_slow_forward_and_cancel_stops_waiting(make_widget, picture, qtbot,
                                                                              segmenter):
    from qtpy.QtCore import QTimer

    viewer, widget = make_widget()
    viewer.add_image(picture, name="pic")
    slow = segmenter.model.unet.register_forward_pre_hook(lambda *_: time.sleep(1.5))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    try:
        widget.expression.value = "the red disc"
        widget.segment()
        qtbot.wait(600)
        assert widget._worker is not None and widget.cancel_button.enabled
        assert len(ticks) >= 10  # the event loop kept turning while the UNet was busy
        widget.cancel()
        assert widget._worker is None and widget.run_button.enabled and "Cancelled" in widget.status.value
        qtbot.wait(2000)  # the abandoned forward ends in the background ...
        assert "editseg pic" not in viewer.layers or not viewer.layers["editseg pic"].data.any()  # ... unseen
    finally:
        timer.stop()
        slow.remove()


def grid_level(widget, segmenter):
    """The widget on a segmenter that decides at the work grid (no edge step): a click then
    moves the clicked cell itself, which the guided filter would smooth on random weights."""
    from napari_editseg import EditSegmenter

    widget._segmenters[widget._key()] = EditSegmenter(segmenter.model, edge_refine="none")
    return widget._segmenters[widget._key()]


def test_rethreshold_and_clicks_need_no_unet_forward(make_widget, picture, qtbot, segmenter, count_calls):
    viewer, widget = make_widget()
    segmenter = grid_level(widget, segmenter)
    viewer.add_image(picture, name="pic")
    run(qtbot, widget)
    labels = viewer.layers["editseg pic"]
    base = widget._run.base[()]
    with count_calls(segmenter.model.unet) as forwards:
        widget.keep.value = "all"  # every pixel above the threshold, so the masks below are exact
        start = time.perf_counter()
        widget.mask_threshold.value = 0.2
        elapsed = time.perf_counter() - start
        assert np.array_equal(labels.data == 1, base.scores >= 0.2)
        widget.mask_threshold.value = 0.8
        assert np.array_equal(labels.data == 1, base.scores >= 0.8)
        widget.mask_threshold.value = 0.5
        row, col = np.unravel_index(np.argmin(base.scores), base.scores.shape)
        assert labels.data[row, col] == 0
        widget.add_click_points()
        points = viewer.layers[CLICKS_LAYER]
        widget.polarity.value = POSITIVE
        points.add([row, col])
        assert labels.data[row, col] == 1  # the clicked spot joined the object
        assert widget._run.current[()].positive == ((float(row), float(col)),)
        widget.polarity.value = NEGATIVE
        points.add([20, 18])
        assert widget._run.current[()].negative == ((20.0, 18.0),)
        points.data = points.data[:0]  # clearing the clicks returns to the plain result
        assert np.array_equal(labels.data == 1, segmenter.refine(base, keep="all").mask)
    assert forwards.calls == 0
    assert elapsed < 0.5


def test_a_stack_segments_the_current_slice_or_all_slices(make_widget, picture, qtbot, segmenter):
    viewer, widget = make_widget()
    grid_level(widget, segmenter)
    stack = np.stack([picture[..., 0]] * 4)
    viewer.add_image(stack, name="stack", scale=(5.0, 0.5, 0.5), translate=(0, 10, 20))
    viewer.dims.set_point(0, 10.0)  # world z = 10 -> slice 2
    assert not widget.slices.native.isHidden()
    run(qtbot, widget)
    labels = viewer.layers["editseg stack"]
    assert labels.data.shape == stack.shape
    assert tuple(labels.scale) == (5.0, 0.5, 0.5) and tuple(labels.translate) == (0, 10, 20)
    written = [bool(labels.data[z].any()) for z in range(4)]
    assert written == [False, False, True, False]
    widget.slices.value = ALL
    widget.axis.value = 0
    run(qtbot, widget, "the disc")
    assert all((labels.data[z] == 2).any() for z in range(4))
    assert widget._run.base.keys() == {(0,), (1,), (2,), (3,)}


@pytest.mark.parametrize("kind", ["uint16-grey", "rgba", "float"])
def test_image_types(make_widget, picture, qtbot, kind):
    viewer, widget = make_widget()
    data = {"uint16-grey": picture[..., 0].astype(np.uint16) * 16,
            "rgba": np.dstack([picture, np.full(picture.shape[:2], 255, np.uint8)]),
            "float": picture[..., 2] / 255.0}[kind]
    viewer.add_image(data, name="img")
    run(qtbot, widget)
    assert viewer.layers["editseg img"].data.shape == (45, 60)
    assert "Label 1" in widget.status.value


def test_a_composite_of_channels(make_widget, picture, qtbot):
    viewer, widget = make_widget()
    viewer.add_image(picture, channel_axis=2, name=["r", "g", "b"])
    widget.image.value = _layers.COMPOSITE
    run(qtbot, widget)
    assert "Label 1" in widget.status.value


def test_bad_inputs_show_a_message_instead_of_raising(make_widget, picture, qtbot, tmp_path):
    viewer, widget = make_widget(model_loaded=False)
    widget.expression.value = "the disc"
    widget.segment()
    assert "Add an image layer" in widget.status.value
    viewer.add_image(picture, name="pic")
    widget.expression.value = "   "
    widget.segment()
    assert "Type an expression" in widget.status.value
    widget.model.value = str(tmp_path / "no-such-model")
    widget.expression.value = "the disc"
    widget.segment()
    wait(qtbot, widget)
    assert "does not exist" in widget.status.value and widget.run_button.enabled


def test_the_model_loads_in_a_worker_once(make_widget, picture, qtbot):
    viewer, widget = make_widget(model_loaded=False)
    viewer.add_image(picture, name="pic")
    widget.load_model()
    wait(qtbot, widget)
    assert "loaded" in widget.status.value
    loaded = widget._segmenters[widget._key()]
    run(qtbot, widget)
    run(qtbot, widget, "again")
    assert widget._segmenters == {widget._key(): loaded}


def test_the_manifest_and_sample_data():
    import npe2

    from napari_editseg import _sample_data

    manifest = npe2.PluginManifest.from_distribution("napari-editseg")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment by words"}
    assert {s.key for s in manifest.contributions.sample_data} == {"astronaut", "coffee", "chelsea", "shapes"}
    data, meta, kind = _sample_data.coffee()[0]
    assert kind == "image" and data.ndim == 3 and meta["name"] == "coffee"
