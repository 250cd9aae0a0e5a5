"""`pip install napari-unet-gradcam` without the [napari] extra: the core, the API and the CLI work
with napari, magicgui and qtpy absent, and without a display. Each check is a fresh interpreter whose
import system refuses those packages, as an environment that never installed them would."""

import os
import pkgutil
import subprocess
import sys

import pytest
import tifffile

import napari_unet_gradcam
from napari_unet_gradcam import save_checkpoint
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet

GUI_ONLY = {"napari", "magicgui", "qtpy"}

# Runs before anything else in the child: a finder first on sys.meta_path that refuses the GUI stack.
BLOCK = f"""
import importlib.abc, sys
class _NoGui(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(GUI_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoGui())
"""

# Modules whose whole point is the napari face: the dock widget and the job it runs in napari's thread.
NAPARI_FACE = {"_widget", "_job"}


def run_without_gui(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "offscreen"  # were Qt reached anyway, it must not find a display either
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_the_blocker_really_refuses_napari():
    r = run_without_gui("import napari")
    assert r.returncode != 0 and "blocked by the test" in r.stderr, r.stderr


def test_core_modules_and_the_api_import_without_napari():
    names = sorted(m.name for m in pkgutil.iter_modules(napari_unet_gradcam.__path__) if m.name not in NAPARI_FACE)
    assert {"cli", "pipeline", "checkpoint", "io", "_sample_data"} <= set(names)
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module('napari_unet_gradcam.' + name)\n"
        "from napari_unet_gradcam import load_model, predict, explain\n"
        f"print(sorted(m for m in {sorted(GUI_ONLY)!r} if m in sys.modules))\n"
    )
    r = run_without_gui(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_cli_help_without_napari():
    r = run_without_gui("import sys; from napari_unet_gradcam.cli import main; sys.exit(main(sys.argv[1:]))", "--help")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "usage: napari-unet-gradcam" in r.stdout


@pytest.mark.slow
def test_cli_explains_without_napari_with_a_tqdm_bar_only_when_asked(tmp_path):
    save_checkpoint(tiny_unet(width=4), tmp_path / "tiny.pth", preprocess={"mode": "percentile"})
    tifffile.imwrite(tmp_path / "cells.tif", nuclei_2d(1, (64, 80)))
    code = "import sys; from napari_unet_gradcam.cli import main; sys.exit(main(sys.argv[1:]))"
    base = ["explain", str(tmp_path / "cells.tif"), "--model", str(tmp_path / "tiny.pth"), "--device", "cpu"]
    quiet = run_without_gui(code, *base, "--out", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert (tmp_path / "quiet" / "cells_labels.tif").exists()
    assert "cells.tif:" not in quiet.stderr and "it/s" not in quiet.stderr and "step/s" not in quiet.stderr
    shown = run_without_gui(code, *base, "--out", str(tmp_path / "shown"), "--progress")
    assert shown.returncode == 0, shown.stderr[-3000:]
    last = shown.stderr.replace("\r", "\n").strip().splitlines()[-1]
    # tqdm's closing line: "cells.tif: 100%|██████████| n/n [elapsed<remaining, rate step/s]"
    assert last.startswith("cells.tif: 100%|") and "step" in last, shown.stderr
    done, total = last.split("| ", 1)[1].split(" ", 1)[0].split("/")
    assert done == total and int(total) >= 2
