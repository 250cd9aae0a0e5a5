"""The console command with model folders (MONAI bundle, nnU-Net v2) and 3-D TIFF volumes."""

import json

import numpy as np
import pytest
import tifffile

from napari_unet_gradcam import explain
from napari_unet_gradcam.bundles import load_any, nnunet_normalize

from .test_cli import cli

pytest.importorskip("monai.networks.nets")
pytest.importorskip("dynamic_network_architectures")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from .test_families_loaders import _bundle, _nnunet_folder

    d = tmp_path_factory.mktemp("cli_families")
    (d / "bundle3d").mkdir()
    _bundle(d / "bundle3d", "BasicUNet", 3)
    (d / "bundle2d").mkdir()
    _bundle(d / "bundle2d", "DynUNet", 2)
    nnunet, _ = _nnunet_folder(d / "nn", 3)
    rng = np.random.default_rng(4)
    vol = rng.random((20, 32, 28)).astype(np.float32)
    vol[6:14, 8:20, 5:18] += 1.5
    tifffile.imwrite(d / "vol.tif", vol, metadata={"axes": "ZYX"})
    tifffile.imwrite(d / "plain.tif", vol)  # no axes recorded: tifffile reads it as QYX
    tifffile.imwrite(d / "ct.tif", (vol * 150 - 80).astype(np.int16), metadata={"axes": "ZYX"})
    tifffile.imwrite(d / "slice.tif", vol[0, :32, :24])
    return d, nnunet, vol


def test_monai_bundle_folder_explains_a_3d_tiff_as_the_api_does(folders, tmp_path):
    d, _, vol = folders
    r = cli("explain", d / "vol.tif", d / "plain.tif", "--model", d / "bundle3d", "--out", tmp_path, "--probabilities")
    assert r.returncode == 0, r.stderr
    assert "12 maps" in r.stdout  # BasicUNet's four decoder stages x three classes
    ref = explain(vol, load_any(d / "bundle3d", device="cpu"))
    for stem in ("vol", "plain"):
        with tifffile.TiffFile(tmp_path / f"{stem}_labels.tif") as tif:
            assert tif.series[0].axes == "ZYX"  # Z is the volume's own axis, not a stack of slices
            np.testing.assert_array_equal(tif.asarray(), ref.labels)
        with tifffile.TiffFile(tmp_path / f"{stem}_maps.tif") as tif:
            assert tif.series[0].axes == "QCZYX"
            maps = tif.asarray()
        assert maps.shape == (4, 3, *vol.shape)
        np.testing.assert_allclose(maps[3, 2], ref.cams["upcat_1", 2], atol=1e-6)
        assert tifffile.imread(tmp_path / f"{stem}_probabilities.tif").shape == (3, *vol.shape)
        meta = json.loads((tmp_path / f"{stem}_metadata.json").read_text())
        assert meta["layers"] == ["upcat_4", "upcat_3", "upcat_2", "upcat_1"] and meta["spatial_dims"] == 3
        assert meta["class_names"] == ["background", "liver", "tumour"] and meta["model"]["class"] == "BasicUNet"
        assert (tmp_path / f"{stem}_contact_sheet.png").stat().st_size > 0


def test_nnunet_folder_normalises_as_its_plans_say(folders, tmp_path):
    d, nnunet, _ = folders
    ct = tifffile.imread(d / "ct.tif")
    r = cli("explain", d / "ct.tif", "--model", nnunet, "--out", tmp_path, "--layers", "decoder.stages.2")
    assert r.returncode == 0, r.stderr
    net = load_any(nnunet, device="cpu")
    ref = explain(nnunet_normalize(ct, net), net, layers=["decoder.stages.2"], preprocess="none")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ct_labels.tif"), ref.labels)
    meta = json.loads((tmp_path / "ct_metadata.json").read_text())
    assert meta["preprocess"] == {"mode": "nnunet", "schemes": ["CTNormalization"]}
    # The Pytorch-UNet rule instead (divide by 255) gives another input, so other labels.
    r = cli("explain", d / "ct.tif", "--model", nnunet, "--out", tmp_path / "b", "--preprocess", "divide255")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "b" / "ct_metadata.json").read_text())
    assert meta["preprocess"] == {"mode": "divide255"}


def test_a_2d_bundle_explains_a_2d_image(folders, tmp_path):
    d, _, vol = folders
    r = cli("explain", d / "slice.tif", "--model", d / "bundle2d", "--out", tmp_path, "--preprocess", "none")
    assert r.returncode == 0, r.stderr
    ref = explain(vol[0, :32, :24], load_any(d / "bundle2d", device="cpu"), preprocess="none")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "slice_labels.tif"), ref.labels)
    assert tifffile.imread(tmp_path / "slice_maps.tif").shape == (3, 3, 32, 24)


def test_model_folders_wrong_inputs_and_2d_only_options_get_one_line_each(folders, tmp_path):
    d, _, _ = folders
    (tmp_path / "empty").mkdir()
    cases = [
        (("vol.tif", "--model", tmp_path / "empty"), "neither a MONAI bundle"),
        (("vol.tif", "--model", d / "bundle3d", "--workers", "1"), "is a folder; dask workers load"),
        (("vol.tif", "--model", d / "bundle3d", "--check"), "--check works on 2-D images"),
        (("vol.tif", "--model", d / "bundle3d", "--instances"), "--instances works on 2-D images"),
        (("vol.tif", "--model", d / "bundle3d", "--mask-values"), "--mask-values writes a Pytorch-UNet"),
        (("slice.tif", "--model", d / "bundle3d"), "give a volume (Z, Y, X)"),
        (("vol.tif", "--model", d / "bundle3d", "--scale", "0.5"), "resample a volume before explaining it"),
    ]
    for i, (args, match) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = cli("explain", *(d / a if str(a).endswith(".tif") else a for a in args), "--out", out)
        lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
        assert r.returncode != 0 and len(lines) == 1 and match in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (out.exists() and list(out.glob("*.tif")))
