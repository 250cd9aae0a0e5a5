"""The public per-block passes, run by hand in three passes, give the whole-image maps."""

import numpy as np
import pytest
import torch

from napari_unet_gradcam import explain
from napari_unet_gradcam.blocks import (
    Sums,
    channel_weights,
    forward_block,
    gradient_block,
    job_for_extent,
    maps_block,
    passes,
)
from napari_unet_gradcam.engine import Job, labels_from_logits, resolve_modules
from napari_unet_gradcam.image import prepare
from napari_unet_gradcam.methods import get_method
from napari_unet_gradcam.synthetic import nuclei_2d
from napari_unet_gradcam.tiling import tile_boxes

from .conftest import tiny_unet

LAYERS = ("up3", "up4")


def blockwise(net, img, method, tile=64, halo=128):
    """Labels and maps from the three block passes, sums reduced between them as a cluster would."""
    x = torch.from_numpy(prepare(img, 1).batch)
    job = Job(net, resolve_modules(net, LAYERS), [0, 1, 2], get_method(method), "predicted")
    boxes = list(tile_boxes(*img.shape, tile, halo))
    labels = torch.zeros(1, *img.shape, dtype=torch.int64)
    maps = {k: np.zeros((1, *img.shape), np.float32) for k in [(ly, c) for ly in LAYERS for c in (0, 1, 2)]}

    def cut(b):
        return x[..., b[0] : b[1], b[2] : b[3]]

    def put(core, part):
        for k, m in part.items():
            maps[k][..., core[0] : core[1], core[2] : core[3]] = m

    net.eval()
    parts = [forward_block(job, cut(ext), core, ext) for core, ext in boxes]
    for (core, _), (logits, _) in zip(boxes, parts, strict=True):
        labels[:, core[0] : core[1], core[2] : core[3]] = labels_from_logits(logits)
    act = sum((s for _, s in parts), Sums())
    grad = Sums()
    if "gradients" in passes(job.method, True):
        for core, ext in boxes:
            ext_labels = labels[:, ext[0] : ext[1], ext[2] : ext[3]]
            sums, local = gradient_block(job_for_extent(job, ext), cut(ext), core, ext, act, ext_labels)
            grad = grad + sums
            put(core, local)
    if "maps" in passes(job.method, True):
        weights = channel_weights(job, act + grad)
        for core, ext in boxes:
            put(core, maps_block(job, cut(ext), core, ext, weights))
    return labels[0].numpy(), maps


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "layercam"])
def test_three_block_passes_equal_the_whole_image(method):
    net, img = tiny_unet(width=8), nuclei_2d(5, (192, 176))
    whole = explain(img, net, layers=LAYERS, method=method, normalize="none")
    labels, maps = blockwise(net, img, method)
    assert (labels == whole.labels).all()
    varied = [key for key, m in whole.cams.items() if m.std() > 0]
    assert len(varied) >= 4
    for key, m in whole.cams.items():
        if key in varied:
            r = np.corrcoef(m.ravel(), maps[key][0].ravel())[0, 1]
            assert r >= 0.9999, (key, r)
        assert np.allclose(maps[key][0], m, rtol=1e-3, atol=1e-4 * max(1.0, float(m.max())))


def test_sums_add_in_any_order():
    a = Sums({"up4": {"sum_a": torch.ones(1, 3)}}, {}, {"up4": 10})
    b = Sums({"up4": {"sum_a": 2 * torch.ones(1, 3)}}, {("up4", 1): {"sum_g": torch.ones(1, 3)}}, {"up4": 5})
    for total in (a + b, b + a, Sums() + a + b):
        assert total.counts == {"up4": 15}
        assert torch.equal(total.act["up4"]["sum_a"], 3 * torch.ones(1, 3))
        assert torch.equal(total.grad["up4", 1]["sum_g"], torch.ones(1, 3))
    assert torch.equal(a.act["up4"]["sum_a"], torch.ones(1, 3))  # the operands are not changed
