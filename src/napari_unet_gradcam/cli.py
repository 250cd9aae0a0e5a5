"""``napari-unet-gradcam``: the same core as the plugin, for scripts, batches and servers."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__
from .errors import InputError, UnetGradcamError
from .image import PREPROCESS_MODES
from .malloc_tuning import pin_glibc_thresholds
from .methods import METHODS
from .model import DECODER_LAYERS


class _Bar:
    """tqdm on stderr for one image's steps, only when stderr is a terminal or ``--progress`` forces it.

    The pipeline reports ``(done, total)``; the bar starts at the first report, when the total is known.
    """

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled, self.bar = label, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def _fail(msg: str) -> None:
    sys.stderr.write(f"napari-unet-gradcam: error: {msg}\n")


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is so it unwinds like Ctrl-C (temporary files go)."""


def _on_signal(signum, frame) -> None:
    raise _Terminated(signum)


def _key(path: Path) -> str:
    # Case-folded: on macOS and Windows names that differ only in case are one file.
    return os.path.realpath(path).casefold()


def _check_out_folder(out: Path) -> None:
    """Refuse an --out that is a file or cannot be written in, before any work."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder; choose a folder (it is created if missing).")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--out {out}: {existing} is a file, so the folder cannot be created; choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {existing} is not writable by you; choose a folder you can write to.")


def _collisions(args, names: Sequence[str]) -> dict[str, str]:
    """Inputs whose outputs would overwrite an input, the model, or another input's outputs."""
    from .io import output_names

    out = Path(args.out)
    protected = {_key(Path(n)): n for n in [*names, args.model] if n}
    inodes = {}  # hard links, and one file under two spellings
    for n in protected.values():
        try:
            st = os.stat(n)
            inodes[st.st_dev, st.st_ino] = n
        except OSError:
            pass
    owners: dict[str, list[str]] = {}
    for name in names:
        owners.setdefault(Path(name).stem.casefold(), []).append(name)
    refused = {}
    for name in names:
        stem = Path(name).stem
        for out_name in output_names(stem, args.probabilities, args.instances) + [f"{stem}_checks.png"] * args.check:
            target = out / out_name
            hit = protected.get(_key(target))
            if hit is None and target.exists():
                st = os.stat(target)
                hit = inodes.get((st.st_dev, st.st_ino))
            if hit is not None:
                refused[name] = (
                    f"{name}: its output {target} would overwrite {hit}; nothing was done for it. "
                    "Choose another --out folder."
                )
                break
        sharing = owners[stem.casefold()]
        if name not in refused and len(sharing) > 1:
            others = ", ".join(n for n in sharing if n != name)
            refused[name] = (
                f"{name}: would write the same output files ({stem}_*) as {others}; nothing was done for "
                "either. Rename one, or run them with different --out folders."
            )
    return refused


def _explain_files(args, images: Sequence[tuple[str, object, str | None]], net=None, cancel=None) -> int:
    """Explain each (name, image-or-path, axes) and write its outputs; return the number that failed.

    ``net``: a model already loaded (a dask worker's own copy); ``cancel``: explain()'s token.
    """
    from .bundles import load_any
    from .io import layout_from_axes, read_image, write_result
    from .pipeline import explain

    try:
        net = net if net is not None else load_any(args.model, device=args.device)
    except UnetGradcamError as exc:
        _fail(str(exc))
        return len(images) or 1
    out = Path(args.out)
    failed = 0
    progress = args.progress or sys.stderr.isatty()
    for name, source, axes in images:
        try:
            if isinstance(source, (str, Path)):
                image, axes = read_image(source)
            else:
                image = source
            layout = layout_from_axes(axes, image.shape)
            if getattr(args, "channel_axis", None) is not None:
                layout = {"channel_axis": args.channel_axis, "rgb": False}
            layout["repeat_channels"] = bool(getattr(args, "repeat_channels", False))
            volume = _refuse_for_volumes(net, args)
            res = explain(
                image,
                net,
                layers=tuple(args.layers),
                classes=args.classes,
                method=args.method,
                target=args.target,
                normalize=args.normalize,
                tile_size=args.tile_size,
                scale=args.scale,
                threshold=args.threshold,
                preprocess=args.preprocess,
                progress=_Bar(Path(name).name, progress),
                cancel=cancel,
                **layout,
            )
            rgb = bool(layout.get("rgb")) or (image.ndim >= 3 and image.shape[-1] in (3, 4) and "rgb" not in layout)
            n_stack = res.labels.ndim - 2 - volume  # a volume's Z is spatial, not a stack axis
            stack_axes = "".join(a for a in (axes or "") if a not in "YXSCZ"[: 4 + volume])[:n_stack]
            stack_axes = (stack_axes if len(stack_axes) == n_stack else "Q" * n_stack) + "Z" * volume
            stem = Path(name).stem
            checks = _check(net, image, res, layout, _Bar(f"{Path(name).name} check", progress)) if args.check else None
            mask_values = net.mask_values if args.mask_values else None
            if layout.get("channel_axis") is not None:  # the contact sheet indexes (..., C, Y, X)
                image = np.moveaxis(image, layout["channel_axis"], -3)
            files = write_result(
                res, image, out, stem, stack_axes, args.probabilities, rgb, args.instances, mask_values
            )
            if checks is not None:
                files += _write_curves(checks, out / f"{stem}_checks.png", name)
            fg = float((res.labels > 0).mean())
            count = f", {int(res.instances().max())} objects" if args.instances else ""
            print(
                f"{name}: {len(res.cams)} maps ({res.metadata['method_title']}), foreground {fg:.1%}{count}, "
                f"{res.metadata['seconds']:.1f} s -> {', '.join(f.name for f in files)}"
            )
            for warning in res.metadata["ood_warnings"]:
                print(f"{name}: warning: {warning}")
        except Exception as exc:  # one input's failure must not cost the rest of the batch
            failed += 1
            _fail(failure_line(name, exc, args.debug))
    return failed


def _refuse_for_volumes(net, args) -> bool:
    """Whether ``net`` is 3-D; the options that only 2-D runs or Pytorch-UNet checkpoints have are refused."""
    from .families import spatial_dims

    if args.mask_values and not hasattr(net, "mask_values"):
        raise InputError(
            f"--mask-values writes a Pytorch-UNet checkpoint's mask values; this {type(net).__name__} has none: "
            "leave it out (the labels TIFF holds class indices)."
        )
    if spatial_dims(net) != 3:
        return False
    for flag, given in (("--check", args.check), ("--instances", args.instances)):
        if given:
            raise InputError(
                f"{flag} works on 2-D images; this {type(net).__name__} is 3-D: leave {flag} out "
                "(docs/models.md, 'On the command line')."
            )
    return True


def failure_line(name: str, exc: Exception, debug: bool) -> str:
    """The one line a batch prints for an input that failed; with --debug a surprise is raised instead."""
    if isinstance(exc, UnetGradcamError):
        return str(exc) if str(name) in str(exc) else f"{name}: {exc}"
    if isinstance(exc, MemoryError):
        return f"{name}: out of memory; pass --tile-size 512 (or smaller)."
    if isinstance(exc, OSError):  # writing: disk full, permissions, a folder where an output goes
        return f"{name}: could not write its outputs ({exc}); nothing was left for it. Check the --out folder."
    if debug:
        raise exc
    return f"{name}: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def _check(net, image, res, layout: dict, bar):
    """check_maps of the result; its numbers go into the metadata JSON (``checks``)."""
    from .faithfulness import check_maps

    checks = check_maps(image, net, res, progress=bar, **layout)  # its refusals name check_maps
    res.metadata["checks"] = checks.to_dict()
    return checks


def _write_curves(checks, path: Path, name: str) -> list[Path]:
    """The curves PNG; without matplotlib a warning instead (the numbers are in the JSON anyway)."""
    from .atomic import atomic_outputs
    from .curves_plot import save_curves_png

    try:
        with atomic_outputs() as target:
            save_curves_png(checks, path, target(path))
    except UnetGradcamError as exc:
        sys.stderr.write(
            f"napari-unet-gradcam: warning: {name}: no {path.name} ({exc}); the numbers are in the JSON.\n"
        )
        return []
    return [path]


def _cmd_explain(args) -> int:
    _check_out_folder(Path(args.out))
    once: dict[str, str] = {}
    for name in args.images:  # one file named twice (a.tif, ./a.tif) is explained once
        once.setdefault(os.path.realpath(name), name)
    args.images = list(once.values())
    refused = _collisions(args, args.images)
    for name in args.images:
        if name in refused:
            _fail(refused[name])
    todo = [n for n in args.images if n not in refused]
    run = _explain_files
    if args.scheduler or args.workers:
        if args.model and Path(args.model).is_dir():
            raise InputError(
                f"--model {args.model} is a folder; dask workers load a checkpoint file each (checked by its "
                "sha256): explain with a model folder without --workers/--scheduler."
            )
        from .cli_cluster import explain_files_on_cluster as run
    failed = len(refused) + (run(args, [(p, p, None) for p in todo]) if todo else 0)
    ok = len(args.images) - failed
    print(f"Done: {ok} of {len(args.images)} image(s) explained, outputs in {args.out}.")
    return 1 if failed else 0


def _cmd_demo(args) -> int:
    from .synthetic import nuclei_2d

    _check_out_folder(Path(args.out))
    args.images = ["synthetic_nuclei.tif"]
    failed = _explain_files(args, [("synthetic_nuclei.tif", nuclei_2d(seed=7), "YX")])
    if not failed:
        print(f"Demo done: open {Path(args.out) / 'synthetic_nuclei_contact_sheet.png'} to see the maps.")
    return 1 if failed else 0


def _artefacts_recipe(fraction: float) -> dict:
    """``--artefacts``: every image with artefacts (1), or that share of them on top of the plain set."""
    from .train import ARTEFACTS_RECIPE

    return dict(ARTEFACTS_RECIPE) if fraction >= 1 else {**ARTEFACTS_RECIPE, "artefacts": fraction}


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]: e.g. 0.333 for a third")
    return value


def _cmd_train(args) -> int:
    from .train import train, train_bundled

    options = (args.images, args.masks, args.steps, args.seed, args.width, args.init, args.artefacts, args.lr)
    if args.plain_stage is not None and any(o is not None for o in options):
        raise InputError("--plain-stage reproduces the bundled model's second stage; it takes no other options.")
    if all(o is None for o in options):
        t0 = time.perf_counter()
        rec = train_bundled(args.out, plain=args.plain_stage, threads=args.threads)
        print(f"Saved {args.out}: {time.perf_counter() - t0:.0f} s in all, validation {rec['history'][-1]}")
        return 0
    rec = train(
        args.out,
        images=args.images,
        masks=args.masks,
        steps=args.steps,
        seed=args.seed,
        width=args.width,
        threads=args.threads,
        init=args.init,
        **(_artefacts_recipe(args.artefacts) if args.artefacts else {}),
        **({"lr": args.lr} if args.lr is not None else {}),
    )
    last = rec["history"][-1] if rec["history"] else {}
    print(f"Saved {args.out}: {rec['seconds']:.0f} s, validation {last}")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="a Pytorch-UNet checkpoint (.pth), a MONAI bundle folder, an nnU-Net v2 trained-model folder or an smp "
        "save_pretrained folder (docs/models.md); default: the bundled nuclei model",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        default=list(DECODER_LAYERS),
        help="modules to explain (default: the model's decoder stages, up1-up4 for Pytorch-UNet)",
    )
    p.add_argument("--classes", nargs="+", default=None, help="class names or indices (default: all)")
    p.add_argument("--method", default="gradcam", choices=list(METHODS), help="CAM method")
    p.add_argument("--target", default="predicted", choices=["predicted", "image"], help="pixels each score sums")
    p.add_argument("--normalize", default="per-map", choices=["per-map", "shared", "none"])
    p.add_argument(
        "--preprocess",
        default="auto",
        choices=list(PREPROCESS_MODES),
        help="intensities before the network: auto (as the model was trained: a checkpoint's rule, an nnU-Net "
        "folder's plans; else divide by 255 when a value exceeds 1), percentile, divide255 or none",
    )
    p.add_argument("--tile-size", type=int, default=None, help="tile side in pixels (default: automatic)")
    p.add_argument(
        "--scale", type=float, default=1.0, help="resize factor before the network, as upstream's --scale (default 1)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one-channel models: foreground where its probability exceeds this (upstream's -t; default 0.5)",
    )
    p.add_argument(
        "--mask-values",
        action="store_true",
        help="write labels as the checkpoint's mask values (upstream predict.py's masks: 0/255 for a binary "
        "model) instead of class indices",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities")
    p.add_argument("--instances", action="store_true", help="also write instance labels (nuclei split apart)")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when not on a terminal")
    p.add_argument(
        "--check",
        action="store_true",
        help="also check the maps (deletion/insertion curves against a random pixel order, cascading "
        "randomisation; docs/faithfulness.md): numbers in the metadata JSON, curves in <name>_checks.png "
        "(needs matplotlib). One 2-D image, untiled; costs about 100x a segmentation",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "dask cluster (needs: pip install napari-unet-gradcam[cluster])",
        "Each file is explained on a worker. A .zarr input is one large image: its blocks go to every worker "
        "and its results to OUT/NAME.ome.zarr.",
    )
    g = group.add_mutually_exclusive_group()
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="explain each file on the workers of this dask scheduler (e.g. tcp://host:8786); the workers must "
        "see the files, the --out folder and the model at the same paths",
    )
    g.add_argument("--workers", type=_positive, metavar="N", help="explain the files on N local dask workers")


def _classes(values):
    if values is None:
        return None
    return [int(v) if v.isdigit() else v for v in values]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet-gradcam",
        description="Segment images or volumes with a U-Net (Pytorch-UNet, a MONAI bundle, an nnU-Net folder) "
        "and explain the result with Grad-CAM heatmaps.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the bundled model on the bundled sample and write the outputs")
    d.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    _add_run_options(d)
    e = sub.add_parser("explain", help="explain TIFF, PNG or JPEG images, or 3-D TIFF volumes with a 3-D model")
    e.add_argument("images", nargs="+", help="image files")
    e.add_argument("--out", default="gradcam-output", help="output folder (default: gradcam-output)")
    e.add_argument("--channel-axis", type=int, default=None, help="axis holding channels, for multichannel images")
    e.add_argument(
        "--repeat-channels",
        action="store_true",
        help="feed a one-channel image to every input channel of a multichannel model",
    )
    _add_run_options(e)
    _add_cluster_options(e)
    t = sub.add_parser("train", help="train a model: the bundled one (default) or on your images and masks")
    t.add_argument("out", help="checkpoint to write (.pth)")
    t.add_argument("--images", help="folder of images")
    t.add_argument("--masks", help="folder of masks with the same file names")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--width", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="fine-tune: start from this checkpoint's weights ('bundled': the bundled model) instead of random "
        "ones; with other classes than your masks, its output layer is made anew",
    )
    t.add_argument(
        "--plain-stage",
        metavar="CHECKPOINT",
        help="with no other options: run only the bundled recipe's second stage, from these plain-stage weights",
    )
    t.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 2e-3; lower, e.g. 5e-4, to fine-tune)"
    )
    t.add_argument(
        "--artefacts",
        nargs="?",
        const=1.0,
        type=_fraction,
        metavar="FRACTION",
        help="synthetic data with real-stain artefacts (candidate recipes): on every image, or on FRACTION of "
        "480 (the last ones; 0.333 is train.MIXED_RECIPE)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "classes"):
        args.classes = _classes(args.classes)
    handler = {"demo": _cmd_demo, "explain": _cmd_explain, "train": _cmd_train}[args.command]
    pin_glibc_thresholds()
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _on_signal) for s in signals}
    try:
        return handler(args)
    except UnetGradcamError as exc:
        _fail(str(exc))
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except _Terminated as exc:
        signum = exc.args[0]
        _fail(f"stopped by {signal.Signals(signum).name}; files being written were removed, finished ones kept")
        return 128 + signum
    except Exception as exc:
        if args.debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 3
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


if __name__ == "__main__":
    raise SystemExit(main())
