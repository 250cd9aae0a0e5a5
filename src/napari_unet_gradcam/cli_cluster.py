"""``explain FILES --scheduler ADDRESS`` / ``--workers N``: each file explained on a dask worker.

Each task runs the CLI's own per-file code (``cli._explain_files``) on a worker, with the model
that worker loaded itself (``cluster.worker_model``), and sends back the lines it would have
printed; the client prints them as files finish, under one progress bar over the files.
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from tqdm import tqdm

from .cluster import (
    ModelSpec,
    StopFlag,
    as_completed_with_stop,
    cluster_client,
    local_torch_threads,
    preloaded,
    stop_check,
    worker_model,
)
from .errors import InputError, UnetGradcamError

# redirect_stdout swaps the process's sys.stdout; runs on one worker share its model's lock anyway,
# so taking turns here costs little and keeps each file's lines apart.
_capture = threading.Lock()


def explain_file_task(spec: ModelSpec, args: argparse.Namespace, name: str, path: str, stop: str | None):
    """On a worker: explain one file as the CLI does; (failed, printed, errors) or None if stopped first."""
    from .cli import _explain_files

    stopped = stop_check(stop)
    if stopped():
        return None
    net = worker_model(spec)
    out, err = io.StringIO(), io.StringIO()
    with _capture, redirect_stdout(out), redirect_stderr(err):
        failed = _explain_files(args, [(name, path, None)], net=net, cancel=stopped)
    return failed, out.getvalue(), err.getvalue()


def _task_failure(name: str, fut, debug: bool) -> str:
    """One line for a task that raised outside the CLI's own per-file handling (the worker died, ...)."""
    exc = fut.exception()
    if isinstance(exc, UnetGradcamError):
        return str(exc) if name in str(exc) else f"{name}: {exc}"
    if type(exc).__name__ == "KilledWorker":
        return (
            f"{name}: its worker died while explaining it (out of memory?); nothing was written for it. Give the "
            "workers more memory, or pass --tile-size 512 (or smaller)."
        )
    if debug:
        import traceback

        return f"{name}: " + "".join(traceback.format_exception(type(exc), exc, fut.traceback()))
    return f"{name}: unexpected {type(exc).__name__} on its worker: {exc} (rerun with --debug for the traceback)"


def open_zarr(path: str):
    """The array at ``path``: a zarr array, or level 0 of an OME-Zarr image (a group holding "0")."""
    from .zarr_out import require_zarr

    zarr, _ = require_zarr()
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a store
        raise InputError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc}).") from None
    if isinstance(node, zarr.Group):
        if "0" not in node:
            raise InputError(f"{path}: a zarr group without an array '0'; pass the array's own path ({path}/<name>).")
        node = node["0"]
    return node


def _zarr_stem(name: str) -> str:
    base = Path(name).name
    for suffix in (".ome.zarr", ".zarr"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _explain_large(client, args: argparse.Namespace, spec: ModelSpec, name: str, bar_on: bool) -> None:
    """One zarr image as block tasks over the whole cluster, into ``<out>/<stem>.ome.zarr``."""
    from .cli import _Bar
    from .cluster_graph import DEFAULT_TILE, explain_on_cluster

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = explain_on_cluster(
        client,
        open_zarr(name),
        spec,
        out / f"{_zarr_stem(name)}.ome.zarr",
        layers=tuple(args.layers),
        classes=args.classes,
        method=args.method,
        target=args.target,
        normalize=args.normalize,
        tile_size=args.tile_size or DEFAULT_TILE,
        channel_axis=args.channel_axis,
        repeat_channels=args.repeat_channels,
        threshold=args.threshold,
        probabilities=args.probabilities,
        progress=_Bar(f"{Path(name).name} blocks", bar_on),
    )
    print(
        f"{name}: {len(res.cams)} maps ({res.metadata['method_title']}) on the cluster, "
        f"{res.metadata['seconds']:.1f} s -> {res.metadata['out']}"
    )


def explain_files_on_cluster(args: argparse.Namespace, images: list[tuple[str, object, str | None]]) -> int:
    """Explain each (name, path, axes) on the cluster ``args`` names; print as files finish; return failures.

    A ``.zarr`` input is one large image: its blocks are spread over the cluster (``cluster_graph``),
    after the other files, one zarr image at a time.
    """
    from .cli import _fail, failure_line

    large = [name for name, _, _ in images if Path(name).suffix.lower() == ".zarr"]
    images = [im for im in images if im[0] not in large]
    spec = ModelSpec.of(args.model, args.device)
    # Workers start elsewhere (another folder, another machine on a shared file system): absolute paths.
    shipped = argparse.Namespace(**{**vars(args), "progress": False, "out": str(Path(args.out).resolve())})
    shipped.model = spec.path
    threads = None if args.scheduler else local_torch_threads(args.workers)
    show = args.progress or sys.stderr.isatty()
    failed = 0
    with cluster_client(args.scheduler, args.workers) as client, preloaded(client, spec, threads):
        stop = StopFlag(client)
        futures = {
            client.submit(explain_file_task, spec, shipped, name, str(Path(path).resolve()), stop.name, pure=False): (
                name
            )
            for name, path, _ in images
        }
        with tqdm(total=len(futures), desc="files", unit="file", file=sys.stderr, disable=not show) as bar:
            for name, fut in as_completed_with_stop(client, futures, stop):
                with tqdm.external_write_mode(file=sys.stderr):
                    if fut.status == "error":
                        failed += 1
                        _fail(_task_failure(name, fut, args.debug))
                    else:
                        n_failed, printed, errors = fut.result()
                        failed += n_failed
                        sys.stdout.write(printed)
                        sys.stdout.flush()
                        sys.stderr.write(errors)
                bar.update()
        for name in large:
            try:
                _explain_large(client, args, spec, name, show)
            except Exception as exc:  # one input's failure must not cost the rest of the batch
                failed += 1
                _fail(failure_line(name, exc, args.debug))
    return failed
