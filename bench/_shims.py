"""Benchmark-only: let pytorch-grad-cam import without torchvision.

PyPI's torchvision does not load beside this machine's CPU torch wheel, and pytorch-grad-cam
imports torchvision only for image-preprocessing helpers that the benchmark never calls. The
Grad-CAM computation itself (hooks, gradients, cv2 resizing) is pytorch-grad-cam's own code.
"""

import sys
import types


def install_torchvision_stub() -> None:
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        pass
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    mods = {n: types.ModuleType(n) for n in names}
    for n in ("Compose", "Normalize", "ToTensor", "Resize"):
        setattr(mods["torchvision.transforms"], n, object)

    def resize(*args, **kwargs):
        raise RuntimeError("torchvision stub: not used by the benchmark")

    mods["torchvision.transforms.functional"].resize = resize
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision.transforms"].__path__ = []
    sys.modules.update(mods)
