"""The out-of-distribution warning: images unlike the bundled model's training data are flagged, others not."""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from napari_unet_gradcam import explain, load_model, predict, save_checkpoint
from napari_unet_gradcam.cli import main
from napari_unet_gradcam.ood import check_image
from napari_unet_gradcam.synthetic import CLASS_NAMES, generate, nuclei_3d

from .conftest import tiny_unet

DSB = Path(__file__).parent / "data" / "dsb2018_stardist_img2d.tif"
VAL_SEEDS = range(1_000_000, 1_000_016)  # train.py's validation seeds, never trained on


@pytest.fixture(scope="module")
def bundled():
    return load_model(device="cpu")


def _warnings(image, net):
    return check_image(image, predict(image, net), net.class_names)


def _resize(image, factor):
    return ndimage.zoom(image.astype(np.float32), factor, order=1)


@pytest.mark.parametrize("seed", VAL_SEEDS)
def test_synthetic_validation_images_do_not_warn(bundled, seed):
    assert _warnings(generate(seed).image, bundled) == []


def test_real_dsb_image_does_not_warn(bundled):
    img = tifffile.imread(DSB)
    assert _warnings(img, bundled) == []
    assert _warnings(img.astype(np.uint16) * 200 + 900, bundled) == []  # the same light, 16-bit with an offset


def _plain(seed=1_000_002):
    return generate(seed).image.astype(np.float32)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: np.minimum(_plain(), np.percentile(_plain(), 85)), r"of the pixels labelled nucleus are saturated"),
        (lambda: 255 - _plain(), r"Most of the image is bright, unlike fluorescence.*invert"),
        (lambda: _resize(_plain(1_000_003), 5)[:768, :768], r"nuclei look very large.*Try scale=0\.\d+"),
        (lambda: _resize(tifffile.imread(DSB), 0.2), r"nuclei look tiny.*Try scale=\d"),
    ],
    ids=["saturated", "brightfield-like inverted", "huge nuclei", "tiny nuclei"],
)
def test_unlike_images_warn_with_what_to_try(bundled, make, expected):
    found = _warnings(make(), bundled)
    assert any(re.search(expected, w) for w in found), found


def test_blurry_end_plane_of_a_dense_3d_stack_warns(bundled):
    # As in stardist's 3-D test stack: out-of-focus light of packed nuclei, no dark background left.
    plane = nuclei_3d(1_000_011, (9, 128, 128))[0]
    found = _warnings(plane, bundled)
    assert any("no clear dark background" in w for w in found), found


def test_pure_function_of_its_inputs_and_only_for_nuclei_models():
    img = 255 - _plain()
    labels = (img > np.median(img)).astype(np.int32)
    before_img, before_labels = img.copy(), labels.copy()
    assert check_image(img, labels, CLASS_NAMES)
    np.testing.assert_array_equal(img, before_img)
    np.testing.assert_array_equal(labels, before_labels)
    assert check_image(img, labels, ["background", "class 255"]) == []  # a user's own model: its own data


def test_labels_the_model_made_are_judged():
    img = _plain()
    everything = np.ones(img.shape, np.int32)  # "nucleus" everywhere
    assert any("labelled nucleus, more than nuclei cover" in w for w in check_image(img, everything, CLASS_NAMES))
    bands = np.zeros(img.shape, np.int32)
    bands[40:120, 40:200] = 2  # a boundary "band" 80 px wide
    assert any("bands wider than the 1-2 px" in w for w in check_image(img, bands, CLASS_NAMES))


def test_a_stack_is_judged_by_its_middle_plane():
    good, bad = _plain(), 255 - _plain()
    stack = np.stack([good, bad, good])
    labels = np.zeros(stack.shape, np.int32)
    assert any("Most of the image is bright" in w for w in check_image(stack, labels, CLASS_NAMES))
    assert not check_image(np.stack([bad, good, bad]), labels, CLASS_NAMES)


def test_explain_metadata_and_cli_line_carry_the_warning(tmp_path, capsys):
    net = tiny_unet()
    res = explain(255 - _plain()[:96, :96], net, layers=["up4"], classes=[1])
    assert any("Most of the image is bright" in w for w in res.metadata["ood_warnings"])
    assert "ood_warnings" in res.to_json()
    as_tensor = torch.tensor(255 - _plain()[:96, :96], requires_grad=True)  # the check reads a copy of the values
    assert explain(as_tensor, net, layers=["up4"], classes=[1]).metadata["ood_warnings"] == res.metadata["ood_warnings"]
    ckpt = tmp_path / "tiny.pth"
    save_checkpoint(net, ckpt, preprocess={"mode": "percentile"})
    tifffile.imwrite(tmp_path / "inverted.tif", (255 - _plain()[:96, :96]).astype(np.uint8))
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "inverted.tif"), "--model", str(ckpt), "--out", str(out), "--layers", "up4"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert any(line.startswith(f"{tmp_path / 'inverted.tif'}: warning: Most of the image is bright") for line in lines)
