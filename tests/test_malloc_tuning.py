"""Pinned glibc thresholds let freed activation-sized buffers be reused without page faults."""

import os
import platform
import subprocess
import sys

import pytest

from napari_unet_gradcam.malloc_tuning import pin_glibc_thresholds

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

CHILD = r"""
import resource
import numpy as np
from napari_unet_gradcam import explain, load_model
from napari_unet_gradcam.malloc_tuning import pin_glibc_thresholds
from napari_unet_gradcam.synthetic import nuclei_2d
applied = pin_glibc_thresholds()
net, img = load_model(device="cpu"), nuclei_2d(7, (512, 512))
explain(img, net)
explain(img, net)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    explain(img, net)
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 3)
"""


def run_child(**env):
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@glibc
def test_pinned_thresholds_reuse_freed_buffers():
    applied, faults = run_child()
    # Unpinned, a repeated run here faults in 30,000-60,000 pages (one activation is 4,096).
    assert applied
    assert faults < 10_000, f"{faults} page faults per repeated run"


@glibc
def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("UNET_GRADCAM_MALLOC_TUNING", "0")
    assert pin_glibc_thresholds() is False
    applied, _ = run_child(UNET_GRADCAM_MALLOC_TUNING="0")
    assert not applied
