"""Lazy inputs read tile by tile, memory budgets, fixed preprocessing values, checks before reading."""

import numpy as np
import pytest

from napari_unet_gradcam import InputError, explain, predict
from napari_unet_gradcam import source as source_module
from napari_unet_gradcam.image import prepare
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet

da = pytest.importorskip("dask.array")


class Regions:
    """A sliceable image that records every region read and refuses to be converted whole."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, index):
        part = self.data[index]
        self.reads.append(part.shape)
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was converted")


@pytest.fixture(scope="module")
def pair():
    img = (nuclei_2d(3, (200, 260)) * 3000 + 200).astype(np.uint16)
    return tiny_unet(width=8), img


def test_lazy_input_is_read_tile_by_tile_and_matches_numpy(pair):
    net, img = pair
    ref = explain(img, net, layers=("up4",), preprocess="percentile", tile_size=96, normalize="none")
    lazy = Regions(img)
    res = explain(lazy, net, layers=("up4",), preprocess="percentile", tile_size=96, normalize="none")
    assert (res.labels == ref.labels).all()
    for key, m in ref.cams.items():
        assert np.allclose(res.cams[key], m, atol=1e-6)
    assert res.metadata["preprocess"] == ref.metadata["preprocess"]
    # Every read is one tile with its halo (96 + 2 * 64), never the whole 200x260 image.
    assert max(h * w for h, w in lazy.reads[1:]) <= 224 * 224 < img.size
    assert lazy.reads[0] == img.shape  # the percentile sample: a small image needs no stride


@pytest.mark.parametrize("kind", ["dask", "zarr"])
def test_dask_and_zarr_inputs_predict_as_numpy(pair, kind, tmp_path):
    net, img = pair
    if kind == "dask":
        arr = da.from_array(img, chunks=64)
    else:
        zarr = pytest.importorskip("zarr")
        arr = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=img.shape, chunks=(64, 64), dtype=img.dtype)
        arr[:] = img
    assert (predict(arr, net) == predict(img, net)).all()
    assert (predict(arr, net, tile_size=64) == predict(img, net, tile_size=64)).all()


def test_percentiles_from_a_strided_sample_are_close_to_the_full_ones(monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 300.0, (1024, 1536)).astype(np.float32)
    monkeypatch.setattr(source_module, "SAMPLE_VALUES", 1 << 16)  # forces a pixel stride of 5 here
    src = source_module.LazyImage(Regions(img), *_layout(img))
    src.resolve("percentile", None)
    assert src.preprocess["sampled"]["pixel_stride"] > 1
    lo, hi = np.percentile(img, (1.0, 99.8))
    span = float(img.max() - img.min())
    assert abs(src.preprocess["lo"][0] - lo) < 0.005 * span
    assert abs(src.preprocess["hi"][0] - hi) < 0.005 * span


def _layout(img):
    from napari_unet_gradcam.image import layout

    notes: list = []
    return layout(img.shape, img.dtype, 1, notes=notes), notes


def test_fixed_percentile_values_normalise_every_block_alike(pair):
    net, img = pair
    rule = {"mode": "percentile", "lo": 200.0, "hi": 3200.0}
    whole = prepare(img, 1, preprocess=rule).batch
    assert np.allclose(whole, (img - 200.0) / 3000.0, atol=1e-6)
    crop = prepare(img[50:150, 60:200], 1, preprocess=rule).batch
    assert np.array_equal(crop, whole[..., 50:150, 60:200])
    # A run's recorded rule, given back, reproduces its preprocessing exactly on a crop too.
    res = explain(img, net, layers=(), preprocess="percentile")
    again = prepare(img[:64, :64], 1, preprocess=res.metadata["preprocess"]).batch
    assert np.array_equal(again, prepare(img, 1, preprocess="percentile").batch[..., :64, :64])
    with pytest.raises(InputError, match="'lo' must be one finite number or one per channel"):
        prepare(img, 1, preprocess={"mode": "percentile", "lo": [1, 2], "hi": 5})


def test_size_is_checked_before_a_pixel_is_read(pair):
    net, img = pair
    lazy = Regions(img)
    with pytest.raises(InputError, match="the memory budget is"):
        explain(lazy, net, memory_budget=1 << 20)
    assert lazy.reads == []


def test_memory_budget_bounds_the_working_memory(pair):
    net, img = pair
    res = explain(img, net, layers=("up4",), memory_budget=8 << 20)
    assert res.metadata["tile_size"] is not None  # the budget forced tiles on this small image
    assert explain(img, net, layers=("up4",)).metadata["tile_size"] is None
    with pytest.raises(InputError, match="memory_budget must be a whole number >= 1"):
        predict(img, net, memory_budget=-5)


def test_a_memory_map_is_read_lazily(pair, tmp_path):
    net, img = pair
    mm = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=img.dtype, shape=img.shape)
    mm[:] = img
    assert source_module.is_lazy(mm) and not source_module.is_lazy(img)
    assert (predict(mm, net) == predict(img, net)).all()


def test_lazy_stack_with_channels_reads_each_slice(pair):
    net = tiny_unet(n_channels=3, width=8)
    rgb = np.stack([pair[1][:96, :128]] * 3, -1)
    stack = np.stack([rgb, rgb[::-1]])  # (2, 96, 128, 3)
    lazy = Regions(stack)
    labels = predict(lazy, net, preprocess="percentile")
    assert (labels == predict(stack, net, preprocess="percentile")).all()
    assert all(len(s) == 3 for s in lazy.reads[1:])  # one (y, x, c) slice at a time
