"""Property-based tests: any array either explains cleanly or is refused with our own error."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_unet_gradcam import UnetGradcamError, explain, predict

from .conftest import tiny_unet

NET1 = tiny_unet(width=2, seed=3)
NET3 = tiny_unet(n_channels=3, width=2, seed=4)
DTYPES = [np.bool_, np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]
MAX_PIXELS = 6000


@st.composite
def images(draw):
    ndim = draw(st.integers(2, 5))
    lead = draw(st.lists(st.integers(1, 3), min_size=ndim - 2, max_size=ndim - 2))
    h = draw(st.integers(1, 64))
    w = draw(st.integers(1, 64 if draw(st.booleans()) else 400))  # sometimes a huge aspect ratio
    while h * w * int(np.prod(lead)) > MAX_PIXELS and w > 1:
        w //= 2
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = (*lead, h, w)
    if dtype == np.bool_:
        elements = st.booleans()
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    else:
        elements = st.floats(allow_nan=True, allow_infinity=True, width=dtype.itemsize * 8)
    kind = draw(st.sampled_from(["random", "constant", "fill"]))
    if kind == "constant":
        value = draw(elements)
        arr = np.full(shape, value, dtype=dtype)
    else:
        arr = draw(hnp.arrays(dtype, shape, elements=elements, fill=None if kind == "random" else elements))
    return arr


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(img=images(), method=st.sampled_from(["gradcam", "hirescam", "eigencam"]), rgb=st.booleans())
def test_explain_succeeds_cleanly_or_refuses_clearly(img, method, rgb):
    before = img.copy()
    net = NET3 if rgb and img.ndim >= 3 and img.shape[-1] in (3, 4) else NET1
    try:
        res = explain(img, net, layers=("up2", "up4"), classes=[0, 1], method=method, rgb=rgb and net is NET3)
    except UnetGradcamError as exc:
        assert str(exc)  # a message, never an empty error
    else:
        spatial = img.shape[:-1] if net is NET3 else img.shape
        assert res.labels.shape == spatial
        assert res.probabilities.shape == (3, *spatial)
        for m in res.cams.values():
            assert m.shape == spatial and m.dtype == np.float32 and np.isfinite(m).all()
        assert np.isfinite(res.probabilities).all()
    np.testing.assert_array_equal(img, before)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(img=images(), channel_axis=st.integers(-5, 4))
def test_predict_with_any_channel_axis(img, channel_axis):
    try:
        labels = predict(img, NET1, channel_axis=channel_axis)
    except UnetGradcamError:
        return
    assert labels.ndim == img.ndim - 1
