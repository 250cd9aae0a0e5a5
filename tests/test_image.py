"""Every kind of image napari users hold: axes, dtypes, odd sizes, NaN, stacks, scale."""

import threading

import numpy as np
import pytest

from napari_unet_gradcam import Cancelled, InputError, explain, predict
from napari_unet_gradcam.image import padded_size, prepare

from .conftest import tiny_unet


def rng_image(shape, dtype=np.float32, seed=0):
    r = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return r.random(shape) > 0.5
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return r.integers(max(info.min, -1000), min(info.max, 5000), shape).astype(dtype)
    return r.random(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_every_dtype_and_input_unchanged(dtype):
    net = tiny_unet()
    img = rng_image((37, 29), dtype)
    before = img.copy()
    res = explain(img, net, layers=("up4",))
    assert res.labels.shape == img.shape and res.labels.dtype == np.int32
    assert all(np.isfinite(v).all() and v.shape == img.shape for v in res.cams.values())
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (15, 17), (16, 16), (33, 65), (3, 200)])
def test_tiny_and_odd_sizes_are_padded_not_refused(shape):
    net = tiny_unet()
    img = rng_image(shape)
    assert predict(img, net).shape == shape
    res = explain(img, net, layers=("up1", "up4"))
    assert all(v.shape == shape and np.isfinite(v).all() for v in res.cams.values())


def test_padded_size():
    assert padded_size(1, 1) == (16, 16)
    assert padded_size(33, 64) == (48, 64)


def test_nan_and_inf_are_replaced_with_a_warning():
    img = rng_image((40, 40))
    img[3, 3] = np.nan
    img[5, 5] = np.inf
    before = img.copy()
    with pytest.warns(UserWarning, match="NaN/inf"):
        res = explain(img, tiny_unet())
    assert any("NaN" in n for n in res.metadata["notes"])
    assert all(np.isfinite(v).all() for v in res.cams.values())
    np.testing.assert_array_equal(img, before)  # NaN == NaN under assert_array_equal


def test_constant_image_does_not_divide_by_zero():
    res = explain(np.full((32, 32), 7, np.uint16), tiny_unet(), preprocess="percentile")
    assert all(np.isfinite(v).all() for v in res.cams.values())


def test_rgb_and_rgba_layers():
    net3 = tiny_unet(n_channels=3)
    rgb = rng_image((30, 40, 3), np.uint8)
    assert predict(rgb, net3).shape == (30, 40)
    with pytest.warns(UserWarning, match="alpha"):
        assert explain(rng_image((30, 40, 4), np.uint8), net3).labels.shape == (30, 40)


def test_channel_mismatch_names_both_numbers_and_repeat_opt_in():
    net3 = tiny_unet(n_channels=3)
    gray = rng_image((30, 40))
    with pytest.raises(InputError, match="1 channel.*expects 3.*repeat_channels"):
        predict(gray, net3)
    assert predict(gray, net3, repeat_channels=True).shape == (30, 40)
    with pytest.raises(InputError, match="3 channel.*expects 1"):
        predict(rng_image((30, 40, 3), np.uint8), tiny_unet())


def test_explicit_channel_axis_multichannel():
    net2 = tiny_unet(n_channels=2)
    img = rng_image((2, 5, 24, 20))  # C, Z, Y, X
    res = explain(img, net2, channel_axis=0, layers=("up4",))
    assert res.labels.shape == (5, 24, 20)
    assert res.probabilities.shape == (3, 5, 24, 20)


@pytest.mark.parametrize("shape", [(6, 40, 36), (2, 3, 24, 20), (1, 2, 2, 20, 16)])
def test_stacks_keep_their_shape_and_match_slice_by_slice(shape):
    net = tiny_unet()
    img = rng_image(shape)
    res = explain(img, net, layers=("up3",), preprocess="none", normalize="none", batch_size=4)
    assert res.labels.shape == shape
    assert res.cams["up3", 1].shape == shape
    assert res.probabilities.shape == (3, *shape)
    one = explain(img.reshape(-1, *shape[-2:])[1], net, layers=("up3",), preprocess="none", normalize="none")
    np.testing.assert_allclose(res.cams["up3", 1].reshape(-1, *shape[-2:])[1], one.cams["up3", 1], rtol=1e-4, atol=1e-6)


def test_percentile_is_computed_over_the_whole_stack():
    img = rng_image((3, 32, 32)) * 100
    img[0] = 0.0  # an empty slice must stay dark, not be stretched on its own
    prep = prepare(img, 1, preprocess="percentile")
    assert prep.batch[0].max() < prep.batch[1].max()
    assert prep.batch[0].std() == 0


def test_preprocess_modes():
    img = np.full((20, 20), 200, np.uint8)
    img[5:10, 5:10] = 50
    assert prepare(img, 1, preprocess="auto").preprocess == {"mode": "divide255"}
    assert prepare(img / 255.0, 1, preprocess="auto").preprocess == {"mode": "none"}
    assert prepare(img, 1, preprocess="divide255").batch.max() == pytest.approx(200 / 255)
    rule = {"mode": "percentile", "low": 1.0, "high": 99.8}
    # The values the percentiles came to are recorded, so the rule given back normalises alike.
    assert prepare(img, 1, preprocess="auto", model_preprocess=rule).preprocess == {**rule, "lo": [50.0], "hi": [200.0]}
    with pytest.raises(InputError, match="Unknown preprocess"):
        prepare(img, 1, preprocess="zscore")


def test_scale_resizes_for_the_network_and_back():
    net = tiny_unet()
    img = rng_image((50, 70))
    res = explain(img, net, scale=0.5, layers=("up4",))
    assert res.labels.shape == (50, 70) and res.cams["up4", 0].shape == (50, 70)
    with pytest.raises(InputError, match="scale must be a positive"):
        predict(img, net, scale=0)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 4)), np.array(["a", "b"]), np.zeros((3, 3), complex)])
def test_unusable_arrays_get_clear_errors(bad):
    with pytest.raises(InputError):
        predict(bad, tiny_unet())


def test_progress_and_cancellation_mid_run():
    net = tiny_unet()
    img = rng_image((8, 64, 64))
    seen = []
    explain(img, net, layers=("up4",), batch_size=2, progress=lambda d, t: seen.append((d, t)))
    # 4 batches of 2 slices, each a forward pass and one backward per class (3): 16 steps.
    assert seen[-1] == (16, 16) and [d for d, _ in seen] == list(range(1, 17))
    stop = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 2:
            stop.set()

    with pytest.raises(Cancelled):
        explain(img, net, batch_size=1, progress=progress, cancel=stop)
    assert calls == [1, 2]  # stopped at the step after the token was set, not at the end
    with pytest.raises(Cancelled):
        predict(img, net, cancel=lambda: True)
