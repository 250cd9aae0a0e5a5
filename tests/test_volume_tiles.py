"""3-D tiling: a volume in blocks with global channel weights gives the whole-volume run."""

import numpy as np
import pytest

from napari_unet_gradcam import InputError, explain, predict
from napari_unet_gradcam.volume import fed_size
from napari_unet_gradcam.volume_tiles import block_boxes

from .test_engine_nd import tiny3d


@pytest.fixture
def vol():
    rng = np.random.default_rng(5)
    v = rng.random((21, 38, 45)).astype(np.float32)
    v[4:15, 6:30, 10:40] += 1.0
    return v


def test_blocks_cover_the_volume_once_on_the_divisor_grid():
    spatial, divisor = (21, 38, 45), (4, 8, 8)
    fed = fed_size(spatial, divisor)
    boxes = block_boxes(spatial, fed, divisor, 16, 8)
    seen = np.zeros(spatial, int)
    for core, ext in boxes:
        seen[core[0] : core[1], core[2] : core[3], core[4] : core[5]] += 1
        for d in range(3):
            assert ext[2 * d] <= core[2 * d] and core[2 * d + 1] <= ext[2 * d + 1] <= fed[d]
            assert ext[2 * d] % divisor[d] == 0 and (ext[2 * d + 1] - ext[2 * d]) % divisor[d] == 0
            assert ext[2 * d + 1] - ext[2 * d] >= 2 * divisor[d]
    assert (seen == 1).all()
    assert len(boxes) == 2 * 3 * 3


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "eigencam"])
@pytest.mark.parametrize("target", ["predicted", "image", "mask"])
def test_tiled_volume_matches_the_whole_volume(vol, method, target):
    net = tiny3d(seed=4)
    net.size_divisor = 4
    tgt = vol > 1.2 if target == "mask" else target
    kw = {"layers": ["dec1", "dec0"], "method": method, "target": tgt, "preprocess": "none", "normalize": "none"}
    whole = explain(vol, net, **kw)
    tiled = explain(vol, net, tile_size=16, halo=16, **kw)
    assert whole.metadata["tile_size"] is None and tiled.metadata["tile_size"] == 16
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    for key, ref in whole.cams.items():
        got = tiled.cams[key]
        if ref.std() > 0:  # a class with no predicted voxel has an all-zero map
            assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] >= 0.9999, key
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    assert any(whole.cams[k].max() > 0 for k in whole.cams)


def test_a_volume_too_large_for_memory_runs_in_blocks_or_is_refused(vol, monkeypatch):
    import napari_unet_gradcam.volume as volume

    net = tiny3d(seed=4)
    net.size_divisor = 4
    whole = predict(vol, net, preprocess="none")
    # A budget below the whole (padded) volume: blocks are chosen, the labels stay.
    monkeypatch.setattr(volume, "available_bytes", lambda device: volume._bytes_needed(net, 24 * 40 * 40))
    res = explain(vol, net, layers=["dec0"], preprocess="none", halo=16)
    assert res.metadata["tile_size"] is not None
    np.testing.assert_array_equal(res.labels, whole)
    monkeypatch.setattr(volume, "available_bytes", lambda device: 1000)
    with pytest.raises(InputError, match="pass a smaller tile_size or halo, crop the volume"):
        explain(vol, net, layers=["dec0"], preprocess="none")


def test_blocks_of_an_instance_norm_network_come_with_a_note():
    pytest.importorskip("monai.networks.nets")
    from .test_families_loaders import _monai

    net, _ = _monai("BasicUNet", 3)
    vol = np.random.default_rng(1).random((32, 32, 48)).astype(np.float32)
    res = explain(vol, net, layers=["upcat_1"], preprocess="none", tile_size=16, halo=16)
    assert res.labels.shape == vol.shape and res.metadata["tile_size"] == 16
    assert any("instance norms" in n for n in res.metadata["notes"])
    assert not explain(vol, net, layers=["upcat_1"], preprocess="none").metadata["notes"]
