"""Tiled runs with global Grad-CAM weights agree with untiled runs of the same image."""

import numpy as np
import pytest

from napari_unet_gradcam import explain, predict
from napari_unet_gradcam.methods import METHODS
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet


@pytest.fixture(scope="module")
def pair():
    return tiny_unet(width=8), nuclei_2d(3, (200, 260))


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("target", ["predicted", "image"])
def test_tiled_matches_untiled(pair, method, target):
    net, img = pair
    full = explain(img, net, method=method, target=target, normalize="none")
    tiled = explain(img, net, method=method, target=target, normalize="none", tile_size=80, halo=64)
    assert tiled.metadata["tile_size"] == 80
    assert (full.labels == tiled.labels).mean() >= 0.995
    for key, m in full.cams.items():
        if m.std() == 0:
            assert tiled.cams[key].std() < 1e-6 * max(1.0, float(np.abs(tiled.cams[key]).max()))
            continue
        r = np.corrcoef(m.ravel(), tiled.cams[key].ravel())[0, 1]
        assert r >= 0.98, (key, r)


def test_tiled_predict_and_progress_counts(pair):
    net, img = pair
    seen = []
    labels = predict(img, net, tile_size=96, progress=lambda d, t: seen.append((d, t)))
    assert (labels == predict(img, net)).mean() >= 0.995
    assert seen[-1] == (9, 9)  # 3 x 3 tiles of one slice, one pass


def test_auto_tiling_when_memory_is_short(pair, monkeypatch):
    from napari_unet_gradcam import run_plan

    net, img = pair
    monkeypatch.setattr(run_plan, "available_bytes", lambda device: 10_000_000)
    res = explain(img, net, layers=("up4",))
    assert res.metadata["tile_size"] is not None
    assert (res.labels == predict(img, tiny_unet(width=8))).mean() >= 0.99


def test_results_that_cannot_fit_are_refused_before_allocating(pair, monkeypatch):
    from napari_unet_gradcam import InputError, run_plan

    net, img = pair
    monkeypatch.setattr(run_plan, "system_available_bytes", lambda: 2_000_000)
    with pytest.raises(InputError, match=r"results would need .* GiB.*fewer\s+layers or classes"):
        explain(img, net)
    monkeypatch.setattr(run_plan, "system_available_bytes", lambda: 1 << 40)
    assert explain(img, net, layers=("up4",)).labels.shape == img.shape


def test_result_size_counts_each_array_once():
    from napari_unet_gradcam.run_plan import result_bytes

    # Scale 1, 3 classes, 12 maps: logits 3 + maps 12 on the model grid (the same arrays at full
    # size), then labels 1 + probabilities 3: 19 float32 per pixel, not 124 bytes.
    assert result_bytes(1, (100, 100), (100, 100), 3, 12, True) == 19 * 4 * 100 * 100
    # Scale 0.5: the maps are upsampled into new full-size arrays.
    assert result_bytes(1, (50, 50), (100, 100), 3, 12, True) == 15 * 4 * 2500 + 16 * 4 * 10000
    assert result_bytes(2, (100, 100), (100, 100), 1, 0, False) == 2 * 4 * 10000 * 2


def test_refusal_names_the_maps_it_counted(pair, monkeypatch):
    from napari_unet_gradcam import InputError, run_plan

    net, img = pair
    monkeypatch.setattr(run_plan, "system_available_bytes", lambda: 1 << 40)
    with pytest.raises(
        InputError,
        match=r"\(12 map\(s\), labels and probabilities for 1 slice\(s\) of 200x260\), but "
        r"the memory budget is 0\.0 GiB",
    ):
        explain(img, net, memory_budget=100_000)
