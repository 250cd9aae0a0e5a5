import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

import napari_unet_gradcam


@pytest.mark.slow
def test_npe2_validate_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    r = subprocess.run([str(npe2), "validate", "napari-unet-gradcam", "--imports"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in r.stdout


def test_manifest_contents():
    mf = PluginManifest.from_file(Path(napari_unet_gradcam.__file__).with_name("napari.yaml"))
    assert mf.name == "napari-unet-gradcam" and mf.display_name == "UNet Grad-CAM"
    assert [c.value for c in mf.categories] == ["Segmentation", "Visualization"]  # the hub's filters
    assert [w.display_name for w in mf.contributions.widgets] == ["UNet Grad-CAM"]
    assert {s.key for s in mf.contributions.sample_data} == {"nuclei-2d", "nuclei-3d"}
    menus = mf.contributions.menus
    for group in ("napari/layers/segment", "napari/layers/visualize"):
        assert [m.command for m in menus[group]] == ["napari-unet-gradcam.make_widget"]


def test_sample_data_is_deterministic():
    from napari_unet_gradcam._sample_data import nuclei_2d_sample, nuclei_3d_sample

    (a, meta, kind), (b, _, _) = nuclei_2d_sample()[0], nuclei_2d_sample()[0]
    assert meta["name"] == "nuclei 2D"
    assert kind == "image" and a.shape == (512, 512) and (a == b).all()
    stack = nuclei_3d_sample()[0][0]
    assert stack.ndim == 3 and stack.shape[0] == 16
    assert stack[0].mean() < stack[8].mean()  # the ends of the stack are darker, out of focus
