"""Loading and saving Pytorch-UNet checkpoints, treating every file as untrusted.

Two layouts are read:

* upstream ``train.py``: a flat state_dict, optionally with a ``mask_values`` list in it;
* this project's: ``{"state_dict": ..., "mask_values": [...], "unet_gradcam": {...}}``, where the
  last entry holds plain values only (class names, preprocessing, training record).

Only ``torch.load(..., weights_only=True)`` is used, so a file can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_outputs
from .device import resolve_device
from .errors import CheckpointError, UnetGradcamError
from .mask_values import checked_mask_values
from .model import UNet

FORMAT_KEY = "unet_gradcam"
DEFAULT_MODEL_FILE = "nuclei_unet_w16.pth"
_PREFIXES = ("module.", "_orig_mod.")

# Limits checked before anything is allocated: a few-KB file can declare a network or an archive
# of many GB (zero-stride tensors, deflated zeros). Upstream's UNet is width 64 (deepest layer 64*16
# = 1024 channels, 31M parameters, 124 MB); width 128 has 124M parameters (0.5 GB in float32).
MAX_WIDTH = 128
MAX_CHANNELS = 256
MAX_CLASSES = 256
#: Uncompressed bytes of a zip checkpoint: a width-128 network in float64, with room to spare.
MAX_ARCHIVE_BYTES = 3 << 29
#: Metadata nesting and size (plain values only; ours is 3 levels and a few hundred entries).
MAX_METADATA_DEPTH = 32
MAX_METADATA_ITEMS = 100_000
_ZIP_MAGIC = b"PK\x03\x04"


def default_model_path() -> Path:
    """Path of the model that ships inside the package."""
    return Path(str(resources.files("napari_unet_gradcam") / "weights" / DEFAULT_MODEL_FILE))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_archive(path: Path) -> None:
    """Refuse a zip checkpoint whose members would inflate past MAX_ARCHIVE_BYTES.

    torch's reader allocates each record at the size its zip directory declares, then inflates
    into it, so those declared sizes bound what loading can allocate. torch.save stores records
    uncompressed; an archive that zipfile cannot parse is refused rather than handed to torch.
    """
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except Exception as exc:  # BadZipFile, struct and value errors from a mangled directory
        raise CheckpointError(
            f"Checkpoint {path} is a damaged zip archive ({exc}): it is truncated or corrupt; save it again."
        ) from None
    if declared > MAX_ARCHIVE_BYTES:
        raise CheckpointError(
            f"Checkpoint {path} would unpack to {declared / 2**30:.1f} GiB from a "
            f"{path.stat().st_size / 2**20:.1f} MiB file; the limit is {MAX_ARCHIVE_BYTES / 2**30:.1f} GiB "
            f"(a width-{MAX_WIDTH} network). Refused before loading: use a checkpoint saved by torch.save."
        )


def _looks_like_torch_save(path: Path) -> bool:
    """A zip archive (torch.save since 1.6) or a pickle (the legacy format starts with one)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist: check the path.")
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a directory: choose the .pth file inside it.")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"Checkpoint {path} is empty (0 bytes): the file was not saved completely.")
        _check_archive(path)
        if not _looks_like_torch_save(path):
            raise CheckpointError(
                f"Checkpoint {path} is not a PyTorch checkpoint (torch.save writes a zip archive or, in old "
                "versions, a pickle; this file is neither): choose the .pth file your training wrote."
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any object that is not plain data. PyTorch's text goes on to suggest
        # weights_only=False, advice a user must never take for a file they did not make: name only
        # the offending global, if the error says which.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"Checkpoint {path} was refused: it holds objects other than tensors and plain values{what}, "
            "and loading those could run code. Save the model's state_dict instead."
        ) from None
    except OSError as exc:  # before any byte was parsed: permissions, a FIFO, an I/O error
        raise CheckpointError(
            f"Checkpoint {path} could not be opened ({exc.strerror or exc}): check that the file is readable by you."
        ) from None
    except UnetGradcamError:
        raise
    except Exception as exc:  # random or truncated bytes fail in many ways inside the unpickler
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):  # torch's allocator
            raise CheckpointError(
                f"Checkpoint {path} needs more memory than this process can get: free some, or use a bigger machine."
            ) from None
        # weights_only already refused anything executable; what is left is a file we cannot parse.
        raise CheckpointError(
            f"Checkpoint {path} could not be read as a PyTorch file ({type(exc).__name__}): "
            "it is truncated, corrupt, or not a checkpoint."
        ) from exc


def _plain_metadata(meta: Any, path: Path) -> dict:
    """Our metadata entry, checked to be shallow plain values (it reaches JSON and the widget)."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise CheckpointError(
            f"Checkpoint {path}: its {FORMAT_KEY!r} entry is of type {type(meta).__name__}, not a dictionary "
            "of metadata; remove that entry or save the model again with save_checkpoint."
        )
    stack, items = [(meta, 1)], 0
    while stack:
        node, depth = stack.pop()
        items += 1
        if depth > MAX_METADATA_DEPTH:
            raise CheckpointError(
                f"Checkpoint {path}: its {FORMAT_KEY!r} metadata is nested deeper than {MAX_METADATA_DEPTH} "
                "levels; remove that entry or save the model again with save_checkpoint."
            )
        if items > MAX_METADATA_ITEMS:
            raise CheckpointError(
                f"Checkpoint {path}: its {FORMAT_KEY!r} metadata holds more than {MAX_METADATA_ITEMS} values; "
                "remove that entry or save the model again with save_checkpoint."
            )
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
    for key in ("preprocess", "training"):
        if not isinstance(meta.get(key), (Mapping, type(None))):
            raise CheckpointError(
                f"Checkpoint {path}: metadata {key!r} is of type {type(meta[key]).__name__}, not a dictionary; "
                f"remove it from the {FORMAT_KEY!r} entry."
            )
    return dict(meta)


def _split(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list | None, dict]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"Checkpoint {path} holds a {type(obj).__name__}, not a state_dict.")
    meta: dict = {}
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = dict(obj["state_dict"])
        mask_values = obj.get("mask_values")
        meta = _plain_metadata(obj.get(FORMAT_KEY), path)
    else:
        sd = dict(obj)
        mask_values = sd.pop("mask_values", None)
        meta = _plain_metadata(sd.pop(FORMAT_KEY, None), path)
    clean: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value
    return clean, mask_values, meta


def _older_layout(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which pre-2020 Pytorch-UNet layout ``sd`` has, if any: their decoders differ from today's."""
    if any(k.startswith("inc.conv.conv.") or ".mpconv." in k for k in sd):
        return "the 2017-2019 layout (modules inconv/down/up/outconv, keys such as 'inc.conv.conv.0.weight')"
    w = sd.get("up1.conv.double_conv.0.weight")
    if w is not None and w.ndim == 4 and w.shape[0] != w.shape[1] // 2:
        return (
            "the December 2019 - April 2020 layout (today's key names, but decoder blocks without "
            f"halved middle channels: 'up1.conv.double_conv.0.weight' is {tuple(w.shape)})"
        )
    return None


def _refuse_older_layout(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    layout = _older_layout(sd)
    if layout is not None:
        raise CheckpointError(
            f"Checkpoint {path} comes from an older milesial/Pytorch-UNet: {layout}. Its network differs "
            "from the one upstream has built since v1.0 (2020), which is the one this plugin loads. Retrain "
            "with a current Pytorch-UNet, or keep using the release the checkpoint was trained with."
        )


def _architecture(sd: Mapping[str, torch.Tensor], path: Path) -> dict:
    _refuse_older_layout(sd, path)
    try:
        first = sd["inc.double_conv.0.weight"]
        last = sd["outc.conv.weight"]
    except KeyError as exc:
        raise CheckpointError(
            f"Checkpoint {path} is not a Pytorch-UNet state_dict: it has no {exc.args[0]!r} "
            "(expected keys such as 'inc.double_conv.0.weight' and 'outc.conv.weight')."
        ) from None
    if first.ndim != 4 or last.ndim != 4:
        raise CheckpointError(f"Checkpoint {path}: the 'inc' and 'outc' weights are not 2-D convolutions.")
    # Shapes only (no tensor is touched): a zero-stride view can declare any width in a few bytes.
    declared = (
        ("width", "'inc.double_conv.0.weight'", int(first.shape[0]), MAX_WIDTH),
        ("number of input channels", "'inc.double_conv.0.weight'", int(first.shape[1]), MAX_CHANNELS),
        ("number of classes", "'outc.conv.weight'", int(last.shape[0]), MAX_CLASSES),
    )
    for what, key, value, limit in declared:
        if value < 1:
            raise CheckpointError(
                f"Checkpoint {path}: its {what} is 0 (from the shape of {key}); it is not a usable network."
            )
        if value > limit:
            raise CheckpointError(
                f"Checkpoint {path}: its {what} is {value} (from the shape of {key}), above the limit of "
                f"{limit} (upstream's UNet: width 64, 1024 channels at its deepest); refused before building it."
            )
    return {
        "n_channels": int(first.shape[1]),
        "n_classes": int(last.shape[0]),
        "width": int(first.shape[0]),
        "bilinear": "up1.up.weight" not in sd,
        "conv_bias": "inc.double_conv.0.bias" in sd,
    }


def _class_names(meta: Mapping, n_classes: int) -> list[str]:
    names = meta.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == max(n_classes, 2):
        return [str(n) for n in names]
    if n_classes == 1:
        return ["background", "foreground"]
    return ["background"] + [f"class {i}" for i in range(1, n_classes)]


def build_model(sd: Mapping[str, torch.Tensor], source: str | Path = "<state_dict>") -> UNet:
    """A UNet whose shape is read off ``sd``, with ``sd`` loaded strictly."""
    path = Path(str(source))
    arch = _architecture(sd, path)
    net = UNet(**arch)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = str(exc).split("\n\t", 2)
        raise CheckpointError(
            f"Checkpoint {path} does not fit the Pytorch-UNet architecture "
            f"({arch['n_channels']} channels, {arch['n_classes']} classes, width {arch['width']}, "
            f"bilinear={arch['bilinear']}): {' '.join(d.strip() for d in detail[1:])[:400]}"
        ) from None
    bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"Checkpoint {path} holds NaN or infinite weights in {len(bad)} tensor(s) (first: {bad[0]!r}): "
            "the training that saved it diverged; use an earlier checkpoint."
        )
    return net


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "auto") -> UNet:
    """Load a Pytorch-UNet checkpoint (or, with no path, the bundled nuclei model).

    The returned module is in eval mode on ``device`` and carries ``n_channels``, ``n_classes``,
    ``class_names``, ``mask_values``, ``preprocess`` (None for plain upstream checkpoints),
    ``checkpoint_path`` and ``checkpoint_sha256``.
    """
    if path is None:
        path = default_model_path()
        if not path.exists():
            raise CheckpointError(
                f"The bundled default model is missing from this installation ({path}): "
                "reinstall napari-unet-gradcam, or pass the path of your own checkpoint."
            )
    path = Path(path).expanduser()
    sd, mask_values, meta = _split(_read(path), path)
    net = build_model(sd, path)
    mask_values = checked_mask_values(mask_values, max(net.n_classes, 2), str(path))
    net.class_names = _class_names(meta, net.n_classes)
    net.mask_values = mask_values
    net.preprocess = meta.get("preprocess")
    net.training_record = meta.get("training")
    net.checkpoint_path = str(path)
    net.checkpoint_sha256 = file_sha256(path)
    return net.to(resolve_device(device)).eval()


def save_checkpoint(
    net: UNet,
    path: str | os.PathLike,
    *,
    mask_values: list | None = None,
    class_names: list[str] | None = None,
    preprocess: dict | None = None,
    training: dict | None = None,
) -> Path:
    """Write ``net`` in this project's layout (readable by :func:`load_model`).

    The file is written under a fresh, exclusively created name next to its destination and then
    renamed (see ``atomic.py``), so a failed save never leaves a truncated checkpoint under the
    final name, and a link planted in the folder is never followed.
    """
    path = Path(path)
    n_out = max(net.n_classes, 2)
    meta = {
        "class_names": list(class_names or getattr(net, "class_names", None) or _class_names({}, net.n_classes)),
        "preprocess": preprocess if preprocess is not None else getattr(net, "preprocess", None),
        "training": training or {},
        "width": net.width,
    }
    # Metadata must stay plain values, or weights_only loading would (rightly) refuse the file.
    meta = json.loads(json.dumps(meta, default=str))
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "mask_values": list(mask_values or getattr(net, "mask_values", None) or range(n_out)),
        FORMAT_KEY: meta,
    }
    with atomic_outputs() as new_file:
        torch.save(payload, new_file(path))
    return path
