"""What the dock widget needs besides its panels: the one worker it runs at a time, the model
loading body, its error words, the record as text, and the export.

napari and Qt appear only through the objects passed in; no widget is built here.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from . import _layers, hub
from .core.budget import memory_error_from
from .core.model import ModelNotAvailableError
from .record import write_export

RECORD_ORDER = ("label", "expression", "box", "model", "device", "dtype", "versions", "image", "slices")


def record_text(record: dict) -> str:
    """A record as JSON, one key a line (the nested parts on the line of their key), what matters first."""
    keys = [k for k in RECORD_ORDER if k in record] + [k for k in record if k not in RECORD_ORDER]
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(record[k])}" for k in keys) + "\n}"


def message(error: BaseException, model: str) -> str:
    """An error in the widget's words: the CLI's name flags, the widget names its controls; an error
    this code did not word itself is named by its kind, never shown as raw text; running out of memory
    is the memory guard's line, as on the command line."""
    error = memory_error_from(error) or error
    if isinstance(error, ModelNotAvailableError) or hub.hub_unreachable(error):
        return hub.not_available_message(model)
    if isinstance(error, hub.DownloadCancelled):
        return "Download cancelled; Load model (or Segment) resumes it where it stopped."
    if isinstance(error, (ValueError, OSError)):
        return " ".join(str(error).split())
    return (f"the run failed unexpectedly ({type(error).__name__}); the details are in napari's log. "
            "Please report it with the record of the label, if any.")


def load_steps(session, model: str, device: str, cancelled: threading.Event):
    """Worker body: yields (file, bytes done, bytes total) while a first download runs, returns the model."""
    reports: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["model"] = session.load(model, device, hub.progress_bridge(reports.put, cancelled))
        except BaseException as error:  # handed to the worker, which reports it on the GUI thread
            outcome["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive() or not reports.empty():
        try:
            yield reports.get(timeout=0.1)
        except queue.Empty:
            pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


class WorkerSlot:
    """The one background worker the widget runs at a time. Signals of a worker it no longer holds
    (cancelled, or replaced) are dropped, so a late result never reaches the layers."""

    def __init__(self, busy):
        self.worker = None
        self._busy = busy
        self._bars: dict = {}
        self._cancelled = threading.Event()

    def start(self, worker, on_return, on_yield, on_error, on_finished, steps: int = 0) -> None:
        self.worker = worker
        self._busy(True, steps)

        def mine(handler):
            return lambda *value: handler(*value) if self.worker is worker else None

        for signal, handler in (("yielded", on_yield), ("returned", on_return), ("errored", on_error),
                                ("finished", on_finished)):
            if handler is not None:  # a function worker has no "yielded"
                getattr(worker, signal).connect(mine(handler))
        worker.start()

    def release(self) -> None:
        self.worker = None
        self._busy(False)
        for bar in self._bars.values():
            bar.close()
        self._bars = {}

    def cancel(self) -> None:
        self._cancelled.set()
        if self.worker is not None:
            self.worker.quit()

    def new_cancel(self) -> threading.Event:
        self._cancelled = threading.Event()
        return self._cancelled

    @property
    def downloading(self) -> bool:
        return bool(self._bars)

    def download_progress(self, report) -> None:
        """Byte counts of a first download as napari progress bars (the activity dock)."""
        from napari.utils import progress

        name, done, total = report
        if name not in self._bars:
            self._bars[name] = progress(total=total, desc=f"downloading {name}")
        bar = self._bars[name]
        bar.update(done - bar.n)


def export_labels(path: Path, labels, present: list[int], layers) -> tuple[Path, Optional[Path], int]:
    """Write the labels (TIFF), the records of the labels present (JSON sidecar) and, when the image the
    records name has no file of its own (a sample, a layer made in napari), the image as a TIFF beside them,
    so that the replay command runs as shown. Returns (sidecar, image file or None, records written)."""
    from .files import write_labels

    kept = _layers.records(labels)
    records = [kept[label] for label in sorted(present) if label in kept]
    sidecar = write_export(path, np.asarray(labels.data), records)
    names = {r["image"]["layer"] for r in records if not r["image"].get("composite")}
    image = None
    if len(names) == 1 and next(iter(names)) in layers:
        layer = layers[next(iter(names))]
        source = getattr(getattr(layer, "source", None), "path", None)
        if source and Path(source).is_file():
            image = Path(source).resolve()
        else:
            image = path.resolve().with_name(f"{path.stem}-image.tif")
            write_labels(image, np.asarray(layer.data))
    return sidecar.resolve(), image, len(records)
