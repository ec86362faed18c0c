"""napari alone (no plugin) dying in vispy's draw when two layers are deleted through the layer list.

For a report upstream (issue 23's segfault; docs/plugin.md, "A crash that is napari's"). Under an
X display with ``xdotool``::

    xvfb-run -a -s "-screen 0 1280x800x24" python tools/napari_delete_crash.py [SECONDS] [--widget] [--then=NAME]

A napari window with an image, a Labels layer and a Points layer holding one point; then, with
real mouse clicks (X events: Qt-level test clicks do not reproduce it): the points row, the bin,
then the row of NAME (``image``, the default, or ``labels``) and the bin, each row found where the
layer list shows it after the first deletion (SECONDS, default 0, waited after each deletion).
Prints whether napari survived and which layers are left; exit 0 when it survived and only the
other layer is left. Seen here (napari 0.9.2, vispy 0.17.0, Mesa llvmpipe, 2026-12-06): points
then image, SIGSEGV 3 of 3 tries with napari alone and 2 of 2 with the widget docked but its fix
disabled, alive 3 of 3 with the fix; points then labels, alive 3 of 3 even without the fix (an
earlier version of this script clicked the labels row's old position, which after the first
deletion is the image's row: that was the crash it showed). Earlier: alive with 2 s; alive on
napari 0.5.0. The cause: napari's layer removal ends in ``context.finish()`` (napari pull request
8122), which runs vispy's queued GL deletions while another OpenGL context is current; with the
canvas's context made current first, or without that ``finish()``, it survives. ``--widget`` docks
this plugin's widget, which does exactly that when a layer is about to leave, and uses its clicks
layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def app(state: Path, widget: bool) -> None:
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.setGeometry(0, 0, 1280, 800)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (64, 64, 3)).astype(np.uint8), name="image")
    labels = np.zeros((64, 64), np.uint32)
    labels[10:30, 10:30] = 1
    viewer.add_labels(labels, name="labels")
    if widget:
        from napari_editseg._widget import EditSegWidget

        dock = EditSegWidget(viewer)
        viewer.window.add_dock_widget(dock)
        dock.add_click_points()
        viewer.layers["editseg clicks"].add([30, 30])
        viewer.layers["editseg clicks"].name = "points"
    else:
        points = viewer.add_points(np.zeros((0, 2)), name="points")
        points.mode = "add"
        points.add([30, 30])
    qt = viewer.window._qt_viewer

    def dump() -> None:
        rows = {}
        for i in range(qt.layers.model().rowCount()):
            index = qt.layers.model().index(i, 0)
            r = qt.layers.visualRect(index)
            p = qt.layers.viewport().mapToGlobal(r.center())
            rows[qt.layers.model().data(index)] = [p.x(), p.y()]
        p = qt.layerButtons.deleteButton.mapToGlobal(qt.layerButtons.deleteButton.rect().center())
        partial = state.with_suffix(".part")  # written whole, then renamed: never read half-written
        partial.write_text(json.dumps({"rows": rows, "bin": [p.x(), p.y()]}))
        partial.replace(state)

    timer = QTimer()
    timer.timeout.connect(dump)
    timer.start(50)  # often: the row positions after a deletion are known at once
    napari.run()


def click(x: int, y: int) -> None:
    subprocess.run(["xdotool", "mousemove", str(x), str(y)], check=True)
    time.sleep(0.2)
    subprocess.run(["xdotool", "click", "1"], check=True)
    time.sleep(0.4)


def main(wait: float, widget: bool = False, then: str = "image") -> int:
    state = Path(tempfile.mkdtemp()) / "state.json"
    log = state.with_name("napari.log")
    with log.open("w") as stderr:
        napari = subprocess.Popen([sys.executable, __file__, "--app", str(state), *(["--widget"] * widget)],
                                  stdout=subprocess.DEVNULL, stderr=stderr,
                                  env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    for _ in range(600):
        if state.exists():
            break
        time.sleep(0.2)
    time.sleep(2)
    for layer in ("points", then):
        shown = rows(state, lambda seen: layer in seen["rows"] and (layer == "points" or "points" not in seen["rows"]))
        click(*shown[layer])
        click(*json.loads(state.read_text())["bin"])
        time.sleep(wait)
    time.sleep(3)
    alive = napari.poll() is None
    left = sorted(json.loads(state.read_text())["rows"])
    print(f"napari {'survived' if alive else f'died (exit {napari.returncode})'} (wait {wait:g} s between deletions); "
          f"layers left: {left}")
    if alive:
        napari.terminate()
    else:
        print(log.read_text()[-3000:])
    return 0 if alive and left == sorted({"image", "labels"} - {then}) else 1


def rows(state: Path, ready, timeout: float = 10.0) -> dict:
    """The layer list's rows (screen positions) once ``ready`` holds for the dumped state."""
    end = time.time() + timeout
    while not ready(json.loads(state.read_text())) and time.time() < end:
        time.sleep(0.05)
    return json.loads(state.read_text())["rows"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--app"]:
        app(Path(sys.argv[2]), "--widget" in sys.argv)
    else:
        numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
        then = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--then=")]
        sys.exit(main(float(numbers[0]) if numbers else 0.0, "--widget" in sys.argv, *then))
