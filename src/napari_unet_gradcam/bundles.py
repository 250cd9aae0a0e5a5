"""Loading MONAI bundles and nnU-Net v2 trained-model folders, as untrusted as any checkpoint.

Nothing in a folder runs: weights are read with ``torch.load(..., weights_only=True)``, and the
network is built from its configuration through an allow-list of network classes and layer
types, never by importing or evaluating a name the file gives. MONAI and nnU-Net's
``dynamic-network-architectures`` are optional (the ``[monai]`` and ``[nnunet]`` extras).
See docs/models.md for what each loader reads and where it differs from the family's own tools.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import _read, _split, file_sha256, load_model
from .device import resolve_device
from .errors import CheckpointError

#: MONAI networks a bundle may name (its ``network_def._target_``), and where they live.
MONAI_NETWORKS = ("BasicUNet", "UNet", "DynUNet")
NNUNET_NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet")
#: Refused before the weights are allocated: a config can declare a network of any size.
MAX_PARAMETERS = 500_000_000
_NNUNET_OPS: dict[str, type[nn.Module]] = {
    f"{c.__module__}.{c.__name__}": c
    for c in (
        nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.GELU,
        nn.Dropout, nn.Dropout2d, nn.Dropout3d,
    )
}  # fmt: skip
_NNUNET_OPS.update({f"torch.nn.{c.__name__}": c for c in list(_NNUNET_OPS.values())})


def _need(module: str, extra: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise CheckpointError(
            f"{what} needs the {module.split('.')[0]} package: pip install 'napari-unet-gradcam[{extra}]'."
        ) from None


def _json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: choose the folder that holds it.") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} could not be read as JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a JSON object.")
    return data


def _build(cls: type[nn.Module], kwargs: dict, source: Path) -> nn.Module:
    """``cls(**kwargs)``, sized on the meta device first so that a huge declared network costs nothing."""
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in cls(**kwargs).parameters())
    except Exception as exc:  # the config's arguments do not fit the class
        raise CheckpointError(
            f"{source}: the network {cls.__name__}({', '.join(kwargs)}) could not be built: {exc}"
        ) from None
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(
            f"{source}: the configuration declares a {cls.__name__} of {n_params / 1e6:.0f} M parameters, above "
            f"the limit of {MAX_PARAMETERS / 1e6:.0f} M; refused before building it."
        )
    return cls(**kwargs)


def _load_weights(net: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n\t")[1:])[:400]
        raise CheckpointError(f"{path} does not fit the network its configuration describes: {detail}") from None


def _finish(net: nn.Module, path: Path, device, **attrs: Any) -> nn.Module:
    for key, value in attrs.items():
        setattr(net, key, value)
    net.preprocess = getattr(net, "preprocess", None)
    net.checkpoint_path = str(path)
    net.checkpoint_sha256 = file_sha256(path)
    return net.to(resolve_device(device)).eval()


# -- MONAI bundles ---------------------------------------------------------------------------------
def _monai_config(folder: Path) -> dict:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = folder / "configs" / name
        if path.exists():
            if name.endswith(".json"):
                return _json(path)
            yaml = _need("yaml", "monai", "A YAML bundle config")
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)  # plain values only: no tags that build objects
            if not isinstance(data, dict):
                raise CheckpointError(f"{path} holds a {type(data).__name__}, not a mapping.")
            return data
    raise CheckpointError(f"{folder} has no configs/inference.json (or .yaml): choose a MONAI bundle's folder.")


def _plain(value: Any, config: dict, where: str, depth: int = 0) -> Any:
    """A config value with ``@name`` references resolved; expressions (``$...``) are refused."""
    if depth > 20:
        raise CheckpointError(f"The bundle's {where} nests or refers too deeply.")
    if isinstance(value, str) and value.startswith("@"):
        key = value[1:]
        if key not in config:
            raise CheckpointError(f"The bundle's {where} refers to {value!r}, which its config does not define.")
        return _plain(config[key], config, key, depth + 1)
    if isinstance(value, str) and value[:1] in ("$", "%"):
        raise CheckpointError(
            f"The bundle's {where} is the expression {value[:60]!r}; expressions could run code and are not "
            "evaluated: replace it by its value in configs/inference.json."
        )
    if isinstance(value, (list, tuple)):
        return [_plain(v, config, where, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, config, where, depth + 1) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"The bundle's {where} holds a {type(value).__name__}, not a plain value.")


def default_class_names(n_out: int) -> list[str]:
    return ["background"] + [f"class {i}" for i in range(1, n_out)]


def _monai_class_names(folder: Path, n_out: int) -> list[str]:
    meta = folder / "configs" / "metadata.json"
    try:
        channel_def = _json(meta)["network_data_format"]["outputs"]["pred"]["channel_def"]
        names = [str(channel_def[str(i)]) for i in range(n_out)]
    except (CheckpointError, KeyError, TypeError):
        return default_class_names(n_out)
    return names


def load_monai_bundle(folder: str | os.PathLike, device: str | torch.device = "auto") -> nn.Module:
    """A MONAI BasicUNet, UNet or DynUNet from a bundle folder: ``configs/inference.json`` and ``models/model.pt``.

    The network is built from the config's ``network_def`` (its ``_target_`` must be one of
    :data:`MONAI_NETWORKS`); the bundle's pre- and post-processing transforms are not run.
    """
    folder = Path(folder).expanduser()
    config = _monai_config(folder)
    net_def = _plain(config.get("network_def"), config, "network_def")
    if not isinstance(net_def, dict) or not isinstance(net_def.get("_target_"), str):
        raise CheckpointError(f"{folder}: the bundle's network_def has no _target_ naming the network class.")
    target = net_def["_target_"]
    name = target.rsplit(".", 1)[-1]
    if name not in MONAI_NETWORKS or not (target == name or target.startswith("monai.networks.nets.")):
        raise CheckpointError(
            f"{folder}: the bundle's network is {target!r}; the loadable ones are MONAI's "
            f"{', '.join(MONAI_NETWORKS)}. Build other networks in Python and pass them to explain()."
        )
    extra = sorted(k for k in net_def if k.startswith("_") and k not in ("_target_", "_desc_"))
    if extra:
        raise CheckpointError(f"{folder}: network_def uses {', '.join(extra)}, which this loader does not evaluate.")
    kwargs = {k: v for k, v in net_def.items() if not k.startswith("_")}
    nets = _need("monai.networks.nets", "monai", "A MONAI bundle")
    net = _build(getattr(nets, name), kwargs, folder)
    weights = folder / "models" / "model.pt"
    obj = _read(weights)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]  # bundles trained with MONAI's CheckpointSaver keep the network under "model"
    _load_weights(net, _split(obj, weights)[0], weights)
    n_out = int(kwargs.get("out_channels", 0)) or None
    attrs = {"n_channels": int(kwargs["in_channels"])} if "in_channels" in kwargs else {}
    if n_out:
        attrs.update(n_classes=n_out, class_names=_monai_class_names(folder, max(n_out, 2)))
    dims = kwargs.get("spatial_dims", kwargs.get("dimensions"))
    if dims is not None:
        attrs["spatial_dims"] = int(dims)
    return _finish(net, weights, device, family="monai", **attrs)


# -- nnU-Net v2 --------------------------------------------------------------------------------------
def _nnunet_configuration(plans: dict, name: str, folder: Path) -> dict:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise CheckpointError(
            f"{folder}: plans.json has no configuration {name!r} (it has {', '.join(configs) or 'none'})."
        )
    conf = dict(configs[name])
    parent = conf.get("inherits_from")
    if parent and parent != name:
        conf = {**_nnunet_configuration(plans, parent, folder), **conf}
    return conf


def _nnunet_network(conf: dict, n_in: int, n_out: int, folder: Path) -> nn.Module:
    arch = conf.get("architecture")
    if not isinstance(arch, dict):
        raise CheckpointError(
            f"{folder}: plans.json predates nnU-Net v2.4 (no 'architecture' entry); re-plan with a current "
            "nnU-Net, or build the network in Python and pass it to explain()."
        )
    name = str(arch.get("network_class_name", ""))
    cls_name = name.rsplit(".", 1)[-1]
    if cls_name not in NNUNET_NETWORKS or not name.startswith("dynamic_network_architectures."):
        raise CheckpointError(f"{folder}: the network {name!r} is not one of {', '.join(NNUNET_NETWORKS)}.")
    kwargs = dict(arch.get("arch_kwargs", {}))
    for key in arch.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            if kwargs[key] not in _NNUNET_OPS:
                raise CheckpointError(f"{folder}: {key}={kwargs[key]!r} is not a layer type this loader knows.")
            kwargs[key] = _NNUNET_OPS[kwargs[key]]
    unet = _need("dynamic_network_architectures.architectures.unet", "nnunet", "An nnU-Net model")
    cls = getattr(unet, cls_name)
    return _build(cls, {"input_channels": n_in, "num_classes": n_out, "deep_supervision": False, **kwargs}, folder)


def _numpy_scalars():
    """weights_only loading that also accepts numpy scalars: nnU-Net logs them in its checkpoints.

    They are plain data (a dtype and bytes) and rebuild without running code.
    """
    core = getattr(np, "_core", None) or np.core
    scalars = [core.multiarray.scalar, np.dtype, *{type(np.dtype(t)) for t in "?bhilqBHILQefdg"}]
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: refused, with _read's message
        return contextlib.nullcontext()
    return torch.serialization.safe_globals(scalars)


def load_nnunet(
    folder: str | os.PathLike,
    fold: int | str = 0,
    checkpoint: str = "checkpoint_final.pth",
    device: str | torch.device = "auto",
) -> nn.Module:
    """An nnU-Net v2 network from a trained-model folder (``plans.json``, ``dataset.json``, ``fold_X/``).

    The returned module carries ``nnunet`` (configuration, normalisation schemes, intensity
    properties, spacing, patch size) for :func:`nnunet_normalize`; nnU-Net's resampling and its
    sliding-window inference are not reproduced (docs/models.md).
    """
    folder = Path(folder).expanduser()
    plans, dataset = _json(folder / "plans.json"), _json(folder / "dataset.json")
    weights = folder / f"fold_{fold}" / checkpoint
    with _numpy_scalars():
        obj = _read(weights)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("network_weights"), Mapping):
        raise CheckpointError(f"{weights} has no 'network_weights': it is not an nnU-Net v2 checkpoint.")
    init = obj.get("init_args") if isinstance(obj.get("init_args"), Mapping) else {}
    configuration = str(init.get("configuration") or folder.name.rsplit("__", 1)[-1])
    labels = dataset.get("labels", {})
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise CheckpointError(
            f"{folder}: this model is region-based (overlapping labels with sigmoid outputs); only "
            "softmax label models are supported."
        )
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    conf = _nnunet_configuration(plans, configuration, folder)
    net = _nnunet_network(conf, len(channels), len(labels), folder)
    _load_weights(net, _split(obj["network_weights"], weights)[0], weights)
    names = [str(k) for k, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    record = {
        "configuration": configuration,
        "normalization_schemes": conf.get("normalization_schemes"),
        "use_mask_for_norm": conf.get("use_mask_for_norm"),
        "intensity_properties": plans.get("foreground_intensity_properties_per_channel"),
        "spacing": conf.get("spacing"),
        "patch_size": conf.get("patch_size"),
        "transpose_forward": plans.get("transpose_forward"),
    }
    dims = 3 if any(isinstance(m, nn.Conv3d) for m in net.modules()) else 2
    attrs = {"n_channels": len(channels), "n_classes": len(labels), "class_names": names, "spatial_dims": dims}
    return _finish(net, weights, device, family="nnunet", nnunet=record, **attrs)


def nnunet_normalize(volume: np.ndarray, net: nn.Module) -> np.ndarray:
    """nnU-Net's intensity normalisation of a (C, Z, Y, X) or one-channel (Z, Y, X) volume, as a float32 copy.

    The schemes of its plans: ``CTNormalization`` (clip to the training foreground's 0.5-99.5
    percentiles, then that foreground's mean and std), ``ZScoreNormalization`` (this volume's
    mean and std), ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo0_1Normalization``.
    Pass the result with ``preprocess="none"``.
    """
    record = getattr(net, "nnunet", None)
    if not record:
        raise CheckpointError("nnunet_normalize needs a network from load_nnunet().")
    out = np.array(volume, dtype=np.float32, copy=True)
    channels = out if out.ndim == 4 else out[None]
    for c, scheme in enumerate(record["normalization_schemes"] or []):
        x = channels[c]
        if scheme == "CTNormalization":
            props = record["intensity_properties"][str(c)]
            np.clip(x, props["percentile_00_5"], props["percentile_99_5"], out=x)
            x -= props["mean"]
            x /= max(props["std"], 1e-8)
        elif scheme == "ZScoreNormalization":
            x -= x.mean()
            x /= max(float(x.std()), 1e-8)
        elif scheme == "RescaleTo01Normalization":
            x -= x.min()
            x /= max(float(x.max()), 1e-8)
        elif scheme == "RGBTo0_1Normalization":
            x /= 255.0
        elif scheme != "NoNormalization":
            raise CheckpointError(f"nnU-Net normalisation {scheme!r} is not reproduced here; normalise yourself.")
    return out


def load_any(path: str | os.PathLike | None, device: str | torch.device = "auto") -> nn.Module:
    """A Pytorch-UNet checkpoint file, a MONAI bundle, an nnU-Net v2 trained-model or an smp model folder."""
    if path is not None and Path(path).expanduser().is_dir():
        from .smp_folder import is_smp_folder, load_smp

        folder = Path(path).expanduser()
        if (folder / "configs").is_dir():
            return load_monai_bundle(folder, device)
        if (folder / "plans.json").exists():
            return load_nnunet(folder, device=device)
        if is_smp_folder(folder):
            return load_smp(folder, device)
        raise CheckpointError(
            f"{folder} is a folder but neither a MONAI bundle (configs/, models/model.pt), an nnU-Net "
            "trained-model folder (plans.json, dataset.json, fold_0/) nor an smp model folder (config.json, "
            "model.safetensors): choose a checkpoint file or such a folder."
        )
    return load_model(path, device)
