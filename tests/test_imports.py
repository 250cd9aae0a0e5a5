"""The package, its sample data and its manifest load without torch (or OpenCV); the public API still resolves."""

import json
import subprocess
import sys

import pytest

import napari_unet_gradcam

PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in ("torch", "cv2") if m in sys.modules)))
"""


def heavy_modules_after(code: str) -> list[str]:
    """Which of torch/OpenCV a fresh interpreter has imported after running ``code``."""
    r = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import napari_unet_gradcam; napari_unet_gradcam.__version__",
        "from napari_unet_gradcam._sample_data import nuclei_2d_sample, nuclei_3d_sample\n"
        "nuclei_2d_sample(); nuclei_3d_sample()",
        "from npe2 import PluginManifest\n"
        "mf = PluginManifest.from_distribution('napari-unet-gradcam')\n"
        "assert mf.contributions.sample_data",
    ],
    ids=["package", "sample-data", "manifest"],
)
def test_light_paths_import_neither_torch_nor_opencv(code):
    assert heavy_modules_after(code) == []


def test_public_api_resolves_on_first_use():
    assert "torch" in heavy_modules_after("from napari_unet_gradcam import load_model, predict, explain")
    for name in napari_unet_gradcam.__all__:
        assert getattr(napari_unet_gradcam, name) is not None, name
    assert set(napari_unet_gradcam.__all__) <= set(dir(napari_unet_gradcam))
    from napari_unet_gradcam.pipeline import explain

    assert napari_unet_gradcam.explain is explain


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        napari_unet_gradcam.no_such_thing  # noqa: B018


def test_version_is_the_same_everywhere():
    from napari_unet_gradcam._version import __version__

    assert napari_unet_gradcam.__version__ == __version__
    assert __version__.count(".") >= 2


def test_all_lists_exactly_the_lazy_names():
    assert set(napari_unet_gradcam.__all__) == {*napari_unet_gradcam._LAZY, "__version__"}
