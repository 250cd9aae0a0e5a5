"""out=: results written to OME-Zarr tile by tile, read back lazily, checked on disk before reading."""

import json
import sys

import numpy as np
import pytest

from napari_unet_gradcam import Cancelled, InputError, explain, predict, zarr_out
from napari_unet_gradcam.synthetic import nuclei_2d

from .conftest import tiny_unet
from .test_large import Regions

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")


@pytest.fixture(scope="module")
def pair():
    return tiny_unet(width=8), nuclei_2d(3, (200, 260))


def test_store_holds_what_the_in_memory_run_returns(pair, tmp_path, monkeypatch):
    net, img = pair
    net.class_names = ["background", "nucleus", "boundary"]
    monkeypatch.setattr(zarr_out, "PYRAMID_TOP", 64)  # a pyramid on a small image: 260 -> 130 -> 65 -> 33
    ref = explain(img, net, layers=("up3", "up4"), tile_size=96, normalize="none")
    path = tmp_path / "r.ome.zarr"
    res = explain(Regions(img), net, layers=("up3", "up4"), tile_size=96, normalize="none", out=path)
    assert res.metadata["out"] == str(path)
    assert type(res.labels).__module__.startswith("dask") and res.probabilities is None
    assert (np.asarray(res.labels) == ref.labels).all()
    for key, m in ref.cams.items():
        assert np.allclose(np.asarray(res.cams[key]), m, atol=1e-6)

    root = zarr.open_group(str(path), mode="r")
    ome = root.attrs["ome"]
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2", "3"]
    assert root["3"].shape == (6, 25, 33)
    channels = ome["omero"]["channels"]
    assert [c["label"] for c in channels][:3] == ["up3/background", "up3/nucleus", "up3/boundary"]
    record = root.attrs["napari_unet_gradcam"]
    json.dumps(record)  # plain JSON
    for (ly, c), m in ref.cams.items():
        name = f"{ly}/{net.class_names[c]}"
        assert record["raw_ranges"][name] == pytest.approx([float(m.min()), float(m.max())], rel=1e-5, abs=1e-7)
        window = channels[[ch["label"] for ch in channels].index(name)]["window"]
        assert window["max"] == pytest.approx(float(m.max()), rel=1e-5, abs=1e-7)
    labels = zarr.open_group(str(path / "labels"), mode="r")
    assert labels.attrs["ome"]["labels"] == ["classes"]
    classes = zarr.open_group(str(path / "labels" / "classes"), mode="r")
    assert classes.attrs["ome"]["image-label"]["properties"][1] == {"label-value": 1, "class": "nucleus"}
    assert (classes["1"][:] == ref.labels[::2, ::2]).all()  # labels pyramid: every other pixel
    del net.class_names


def test_normalised_maps_and_probabilities_on_request(pair, tmp_path):
    net, img = pair
    ref = explain(img, net, layers=("up4",))
    res = explain(img, net, layers=("up4",), out=tmp_path / "p.ome.zarr", probabilities=True)
    assert np.allclose(np.asarray(res.probabilities), ref.probabilities, atol=1e-6)
    for name, r in ref.metadata["ranges"].items():
        assert res.metadata["ranges"][name] == pytest.approx(r, rel=1e-5, abs=1e-7)
    for key, m in ref.cams.items():
        assert np.allclose(np.asarray(res.cams[key]), m, atol=1e-5)
    stack = np.stack([img, img[::-1]])
    labels = predict(stack, net, out=tmp_path / "s.ome.zarr")
    assert (np.asarray(labels) == predict(stack, net)).all()
    ms = zarr.open_group(str(tmp_path / "s.ome.zarr" / "labels" / "classes"), mode="r").attrs["ome"]["multiscales"]
    assert [a["name"] for a in ms[0]["axes"]] == ["z", "y", "x"]


def test_disk_and_path_are_checked_before_reading(pair, tmp_path, monkeypatch):
    net, img = pair
    lazy = Regions(img)
    taken = tmp_path / "taken.ome.zarr"
    taken.mkdir()
    with pytest.raises(InputError, match="already exists"):
        explain(lazy, net, out=taken)
    with pytest.raises(InputError, match="does not exist"):
        explain(lazy, net, out=tmp_path / "no" / "r.ome.zarr")
    monkeypatch.setattr(zarr_out.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(InputError, match=r"may need up to .* GiB on disk"):
        explain(lazy, net, out=tmp_path / "r.ome.zarr")
    with pytest.raises(InputError, match="leave scale at 1"):
        explain(lazy, net, out=tmp_path / "r.ome.zarr", scale=0.5)
    assert lazy.reads == [] and not (tmp_path / "r.ome.zarr").exists()


def test_a_cancelled_run_leaves_no_store(pair, tmp_path):
    net, img = pair
    calls = []
    with pytest.raises(Cancelled):
        explain(
            img,
            net,
            tile_size=96,
            out=tmp_path / "c.ome.zarr",
            cancel=lambda: len(calls) > 3,
            progress=lambda d, t: calls.append(d),
        )
    assert not (tmp_path / "c.ome.zarr").exists()


def test_missing_zarr_names_the_extra(pair, tmp_path, monkeypatch):
    net, img = pair
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(InputError, match=r"pip install napari-unet-gradcam\[zarr\]"):
        predict(img, net, out=tmp_path / "m.ome.zarr")
    assert predict(img, net).shape == img.shape  # the core works without it
