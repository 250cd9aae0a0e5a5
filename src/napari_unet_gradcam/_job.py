"""One run's life: a core call in a napari ``thread_worker``, then its layers, one per event-loop turn.

The run state is one value (:class:`RunState`), so the widget never juggles flags: a job is
IDLE, RUNNING (the worker computes), BUILDING (layers are being added on the main thread) or the
runner is CLOSED (the dock went away: the job is cancelled and nothing is added afterwards).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator

from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, QTimer, Signal

from .errors import Cancelled, UnetGradcamError

log = logging.getLogger(__name__)

# A zero-delay chain of layer additions ran back to back (two or three ~50 ms additions per
# event-loop pass, bench/bench_ui.py); a short delay lets paints and input in between.
LAYER_GAP_MS = 10


class RunState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    BUILDING = "building"
    CLOSED = "closed"


def step_through(steps: Iterator, done: Callable[[], None], failed: Callable[[Exception], None], alive) -> None:
    """Advance ``steps`` one item per event-loop turn; ``done`` at the end, ``failed`` on an error."""

    def advance():
        if not alive():
            return
        try:
            next(steps)
        except StopIteration:
            done()
            return
        except Exception as exc:  # a layer the viewer refuses must not leave the widget stuck
            log.exception("Adding layers failed")
            failed(exc)
            return
        QTimer.singleShot(LAYER_GAP_MS, advance)

    QTimer.singleShot(0, advance)


class Runner(QObject):
    """Runs one job at a time; reports through Qt signals, which arrive on the main thread."""

    progressed = Signal(int, int)
    state_changed = Signal(object)
    # (message, is_error): how the last job ended, for the status line.
    ended = Signal(str, bool)

    def __init__(self):
        super().__init__()
        self.state = RunState.IDLE
        self._cancel = threading.Event()
        self._worker = None

    def _set(self, state: RunState) -> None:
        if self.state is RunState.CLOSED:
            return
        self.state = state
        self.state_changed.emit(state)

    @property
    def busy(self) -> bool:
        return self.state in (RunState.RUNNING, RunState.BUILDING)

    def start(self, compute: Callable, build: Callable[[object], Iterator], finish: Callable[[object, float], str]):
        """``compute(progress, cancel)`` runs in a worker; ``build(result)`` yields once per layer
        on the main thread; ``finish(result, seconds)`` returns the status message."""
        if self.busy or self.state is RunState.CLOSED:
            return False
        self._cancel = threading.Event()
        cancel = self._cancel

        def job():
            # napari imports pandas on first use of layer features; do it here, not on the UI thread.
            import pandas  # noqa: F401

            return compute(lambda done, total: self.progressed.emit(done, total), cancel)

        worker = thread_worker(job, start_thread=False, ignore_errors=True)()
        t0 = time.perf_counter()
        worker.returned.connect(lambda res: self._build(res, build, finish, t0))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._worker_finished)
        self._worker = worker
        self._set(RunState.RUNNING)
        worker.start()
        return True

    def _build(self, res, build, finish, t0: float) -> None:
        if self.state is RunState.CLOSED:
            return
        self._set(RunState.BUILDING)

        def done():
            self.ended.emit(finish(res, time.perf_counter() - t0), False)
            self._set(RunState.IDLE)

        def failed(exc):
            self.ended.emit(f"Could not add the result layers: {exc}", True)
            self._set(RunState.IDLE)

        step_through(build(res), done, failed, lambda: self.state is not RunState.CLOSED)

    def _failed(self, exc: Exception) -> None:
        if self.state is RunState.CLOSED:
            return
        if isinstance(exc, Cancelled):
            self.ended.emit("Cancelled: no layers were added.", False)
        elif isinstance(exc, UnetGradcamError):
            self.ended.emit(str(exc), True)
        else:
            log.error("UNet Grad-CAM run failed", exc_info=exc)
            self.ended.emit(f"The run failed: {type(exc).__name__}: {exc}", True)

    def _worker_finished(self) -> None:
        self._worker = None
        if self.state is RunState.RUNNING:  # failed or cancelled: no layers to build
            self._set(RunState.IDLE)

    def cancel(self) -> None:
        if self.busy:
            self._cancel.set()

    def close(self) -> None:
        """The dock is gone: stop the job; nothing it made is added."""
        self._cancel.set()
        self.state = RunState.CLOSED
