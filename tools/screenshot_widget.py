"""Screenshots of the dock widget in a real napari window, for docs/plugin.md and the README.

Run under a display::

    xvfb-run -a -s "-screen 0 1280x800x24" python tools/screenshot_widget.py [MODEL] [OUT_DIR]

MODEL defaults to the shapes-world demo model that ships in the package. The
pictures: ``widget-shapes.png`` ("red circle" from words alone, default settings, for
docs/shapes-world.md), ``widget-box.png`` (a box drawn around the red circle of the shapes sample, the
expression "red circle" segmented inside it, default settings) and ``widget-record.png``
(the same run with its record unfolded), in a 1280×800 window. New labels layers draw label 1
cyan, so it shows on the red circle.
"""

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_editseg import _sample_data
from napari_editseg._widget import BOX_LAYER, EditSegWidget
from napari_editseg.core.names import DEMO_MODEL
from napari_editseg.samples import SHAPES_SCENE
from napari_editseg.shapes_world import make_sample

ROOT = Path(__file__).resolve().parents[1]


def pump(seconds: float = 1.0) -> None:
    app = QApplication.instance()
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def segment_and_show(viewer, widget) -> None:
    """Run the widget's Segment, wait for it, and select the labels."""
    widget.segment()
    start = time.time()
    while widget._worker is not None and time.time() - start < 600:
        pump(0.05)
    labels = viewer.layers["editseg shapes"]
    labels.opacity = 0.6
    viewer.layers.selection.active = labels
    viewer.reset_view()
    pump()


def main(model: str = DEMO_MODEL, out_dir: str = str(ROOT / "docs" / "images")) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.setGeometry(0, 0, 1280, 800)
    data, meta, _ = _sample_data.shapes()[0]
    viewer.add_image(data, **meta)
    widget = EditSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment by words")
    widget.use_model(model if model == DEMO_MODEL else str(Path(model).resolve()))
    widget.device.value = "cpu"
    widget.expression.value = "red circle"
    segment_and_show(viewer, widget)  # words alone
    viewer.screenshot(str(out / "widget-shapes.png"), canvas_only=False)
    print(f"wrote {out / 'widget-shapes.png'}: {widget.status.value}")
    widget.commit()
    del viewer.layers["editseg shapes"]

    circle = make_sample(SHAPES_SCENE).masks[0]  # the red circle: box it with a margin
    rows, cols = np.nonzero(circle)
    widget.draw_box()
    viewer.layers[BOX_LAYER].add_rectangles(np.array([[rows.min() - 4, cols.min() - 4],
                                                      [rows.max() + 4, cols.max() + 4]]))
    segment_and_show(viewer, widget)
    viewer.layers[BOX_LAYER].mode = "pan_zoom"
    pump()
    viewer.screenshot(str(out / "widget-box.png"), canvas_only=False)
    print(f"wrote {out / 'widget-box.png'}: {widget.status.value}")
    widget.record_fold.expand(animate=False)
    pump()
    viewer.screenshot(str(out / "widget-record.png"), canvas_only=False)
    print(f"wrote {out / 'widget-record.png'}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
