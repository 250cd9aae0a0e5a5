"""A small cache of loaded models, keyed so that a file replaced on disk is read again."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from torch import nn

from .bundles import load_any
from .checkpoint import default_model_path
from .families import spatial_dims

_cache: dict[tuple, nn.Module] = {}
_lock = threading.Lock()


def _key(path: str | None, device: str) -> tuple:
    p = Path(path) if path else default_model_path()
    try:
        st = os.stat(p)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    return (str(p), stamp, device)


def get_model(path: str | None, device: str = "auto") -> nn.Module:
    """Load once per (file or folder version, device); errors are raised, never cached.

    A folder is a MONAI bundle or an nnU-Net trained-model folder (``bundles.load_any``).
    """
    key = _key(path, device)
    with _lock:
        net = _cache.get(key)
    if net is None:
        net = load_any(path or None, device=device)
        with _lock:
            for old in [k for k in _cache if k[0] == key[0] and k[2] == device]:
                del _cache[old]
            _cache[key] = net
    return net


def describe(net: nn.Module) -> str:
    n_params = sum(p.numel() for p in net.parameters())
    names = ", ".join(getattr(net, "class_names", []))
    src = Path(getattr(net, "checkpoint_path", "") or "?").name
    kind = f"width {net.width}" if hasattr(net, "width") else f"{type(net).__name__}, {spatial_dims(net)}-D"
    return (
        f"{src}: {net.n_channels} channel(s) in, classes: {names}; {kind}, "
        f"{n_params / 1e6:.2f} M parameters, on {next(net.parameters()).device}"
    )
