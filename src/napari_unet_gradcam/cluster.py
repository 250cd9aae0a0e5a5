"""Running the core on a dask.distributed cluster: each worker loads the model itself, from its file.

A model never travels through dask. Pickling a module that has carried hooks drops its hooks'
dicts (forward hooks then fail with "cannot create weak reference to 'dict' object"), and an
upstream-size Pytorch-UNet pickles to 118 MiB per task. Tasks carry a :class:`ModelSpec`
(checkpoint path, sha256, device) instead; :func:`worker_model` loads the checkpoint once per
worker process and keeps it, keyed by sha256 and device, and refuses a file whose sha256 differs
from the one the client hashed. :class:`ModelPreload` does that load when a worker joins, so a
missing or different checkpoint is reported once, at the start, not once per task.

dask.distributed is an optional extra (``pip install napari-unet-gradcam[cluster]``): this module
imports without it, and everything that needs it says how to install it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError

try:  # the plugin must subclass WorkerPlugin for Client.register_plugin to accept it
    from distributed import WorkerPlugin as _PluginBase
except ImportError:  # pragma: no cover - exercised by tests/test_cluster.py in a child without distributed
    _PluginBase = object

CLUSTER_HINT = "pip install napari-unet-gradcam[cluster]"
log = logging.getLogger(__name__)


def require_distributed():
    """The ``distributed`` package, or an InputError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            f"Running on a dask cluster needs dask.distributed, which is not installed ({exc}). "
            f"Install it with: {CLUSTER_HINT}"
        ) from None
    return distributed


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model itself: a few hundred bytes, whatever the model's size."""

    path: str | None  # None: the model bundled with the package (each worker's own installation)
    sha256: str
    device: str = "auto"

    @classmethod
    def of(cls, path: str | os.PathLike | None = None, device: str = "auto") -> ModelSpec:
        """Hash the checkpoint at ``path`` (absolute, so workers started elsewhere find it) here."""
        from .checkpoint import default_model_path, file_sha256

        file = Path(path).expanduser().resolve() if path else default_model_path()
        if not file.is_file():
            raise CheckpointError(f"Checkpoint {file}: no such file.")
        return cls(str(file) if path else None, file_sha256(file), str(device))

    @classmethod
    def of_model(cls, net: Any, device: str | None = None) -> ModelSpec:
        """The spec of a model returned by ``load_model`` (its file must be readable by every worker)."""
        sha, path = getattr(net, "checkpoint_sha256", None), getattr(net, "checkpoint_path", None)
        if not sha or not path:
            raise InputError(
                "This model was not loaded from a checkpoint file, so workers cannot load it: save it with "
                "save_checkpoint() where every worker can read it, and pass that file."
            )
        from .checkpoint import default_model_path

        bundled = Path(path).resolve() == default_model_path().resolve()
        dev = device or str(next(net.parameters()).device)
        return cls(None if bundled else str(Path(path).resolve()), sha, dev)


_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()


def _where() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return f"process {os.getpid()}"


def worker_model(spec: ModelSpec):
    """This process's copy of the model ``spec`` names: loaded on first use, checked against its sha256."""
    key = (spec.sha256, spec.device)
    with _models_lock:
        net = _models.get(key)
        if net is None:
            net = _models[key] = _load_checked(spec)
    return net


def forget_model(spec: ModelSpec) -> None:
    """Drop this process's copy (a long-lived worker frees the memory when a run ends)."""
    with _models_lock:
        _models.pop((spec.sha256, spec.device), None)


def _load_checked(spec: ModelSpec):
    from .checkpoint import load_model

    try:
        net = load_model(spec.path, device=spec.device)
    except CheckpointError as exc:
        raise CheckpointError(f"On {_where()}: {exc} Every worker must be able to read the checkpoint.") from None
    if net.checkpoint_sha256 != spec.sha256:
        raise CheckpointError(
            f"On {_where()}: the checkpoint {net.checkpoint_path} has sha256 {net.checkpoint_sha256[:16]}..., "
            f"but the one the client hashed has {spec.sha256[:16]}...: this worker sees a different file. Put "
            "the same checkpoint at the same path on every worker (e.g. a shared file system) and install the "
            "same napari-unet-gradcam version everywhere."
        )
    return net


class ModelPreload(_PluginBase):
    """Worker plugin: load the model when a worker starts or joins, and drop it when the plugin goes.

    ``torch_threads`` sets the worker's torch thread count (e.g. the cores divided by the workers of
    a local cluster, so that workers do not oversubscribe the machine).
    """

    def __init__(self, spec: ModelSpec, torch_threads: int | None = None):
        self.spec, self.torch_threads = spec, torch_threads
        self.name = plugin_name(spec)

    def setup(self, worker=None) -> None:
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        worker_model(self.spec)

    def teardown(self, worker=None) -> None:
        forget_model(self.spec)


def plugin_name(spec: ModelSpec) -> str:
    return f"napari-unet-gradcam-model-{spec.sha256[:16]}-{spec.device}"


@contextmanager
def preloaded(client, spec: ModelSpec, torch_threads: int | None = None) -> Iterator[None]:
    """Load the model on every worker for the block (one clear error if any worker cannot), then free it."""
    plugin = ModelPreload(spec, torch_threads)
    try:
        client.register_plugin(plugin)  # raises the first worker's CheckpointError, as it was raised there
        yield
    finally:  # also when a worker refused: the others free their copy
        try:
            client.unregister_worker_plugin(plugin.name)
        except Exception as exc:  # the cluster may be going away already (Ctrl-C)
            log.debug("could not unregister %s: %s", plugin.name, exc)


@contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None, *, processes: bool = True):
    """A ``distributed.Client``: connected to ``scheduler``, or to a new local cluster of ``workers`` workers.

    A local cluster gets one dask thread per worker (a run holds its model's lock anyway) and is
    closed with the client when the block ends, whether it ends normally, by an error or by Ctrl-C.
    """
    distributed = require_distributed()
    cluster = None
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise InputError(
                f"Could not connect to the dask scheduler at {scheduler} ({exc}). Start one with `dask scheduler` "
                "and pass the address it prints (e.g. tcp://host:8786)."
            ) from None
    else:
        n = workers or 1
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
            # Even without a dashboard the scheduler serves HTTP, by default on 8787: a busy port (another
            # cluster) would print a warning, so take any free one.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,  # a worker's errors come back with its tasks, once
        )
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def local_torch_threads(workers: int) -> int:
    """Torch threads per worker of a local cluster: the cores shared out, at least one each."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class StopFlag:
    """A cluster-wide flag that running tasks poll, so Ctrl-C stops them at their next step.

    Cancelling a future only drops its result; a task already running on a worker thread goes on.
    Tasks are given :attr:`name` and build their check with :func:`stop_check`.
    """

    def __init__(self, client):
        self.name = f"napari-unet-gradcam-stop-{uuid.uuid4().hex}"
        self.event = require_distributed().Event(self.name, client=client)

    def set(self) -> None:
        self.event.set()

    def close(self) -> None:
        try:
            self.event.clear()  # the scheduler forgets a cleared event
        except Exception as exc:
            log.debug("could not clear %s: %s", self.name, exc)


def stop_check(name: str | None, every: float = 0.5) -> Callable[[], bool]:
    """For a task: True once the client has set the flag ``name``; asks the scheduler at most every ``every`` s."""
    if name is None:
        return lambda: False
    event = require_distributed().Event(name)
    last, stopped = 0.0, False

    def check() -> bool:
        nonlocal last, stopped
        now = time.monotonic()
        if not stopped and now - last >= every:
            last, stopped = now, bool(event.is_set())
        return stopped

    return check


def as_completed_with_stop(
    client, futures: Mapping[Any, Any], stop: StopFlag, grace: float = 30.0
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, future)`` as each future of ``{future: item}`` finishes.

    If the consumer stops early (Ctrl-C, SIGTERM, an error), the flag is set so running tasks stop
    at their next step and queued ones return at once; they get ``grace`` seconds to do so (a
    second Ctrl-C cuts that short), then whatever is left is cancelled.
    """
    distributed = require_distributed()
    done = False
    try:
        for fut in distributed.as_completed(list(futures)):
            yield futures[fut], fut
        done = True
    finally:
        if not done:
            stop.set()
            left = [f for f in futures if not f.done()]
            try:
                distributed.wait(left, timeout=grace)
            except BaseException as exc:  # timeout, or Ctrl-C again: cancel without waiting
                log.debug("stopping: %r", exc)
            finally:
                client.cancel([f for f in left if not f.done()])
        stop.close()
