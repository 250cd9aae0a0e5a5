"""Training: deterministic for a seed, and trains on a user's own folders."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_unet_gradcam import InputError, load_model, predict
from napari_unet_gradcam.synthetic import generate
from napari_unet_gradcam.train import synthetic_set, train

SMALL = {"n_train": 6, "n_val": 2, "batch": 2, "patch": 64, "width": 4}


@pytest.mark.parametrize("artefacts", [False, True, 0.5])
def test_same_seed_same_weights(tmp_path, artefacts):
    a = train(tmp_path / "a.pth", steps=6, seed=3, log=None, artefacts=artefacts, **SMALL)
    train(tmp_path / "b.pth", steps=6, seed=3, log=None, artefacts=artefacts, **SMALL)
    sa, sb = torch.load(tmp_path / "a.pth", weights_only=True), torch.load(tmp_path / "b.pth", weights_only=True)
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    assert a["history"] and a["history"][-1]["step"] == 6
    net = load_model(tmp_path / "a.pth")
    assert net.class_names == ["background", "nucleus", "boundary"] and net.preprocess["mode"] == "percentile"
    assert net.training_record["recipe"]["seed"] == 3
    assert net.training_record["source"]["artefacts"] == artefacts
    # A mixed recipe is validated on plain and on artefact images apart.
    assert ("artefacts" in a["history"][-1]) is (artefacts == 0.5)


def test_mixed_set_keeps_the_plain_images_and_adds_artefact_ones():
    plain, _ = synthetic_set(4, 7, (64, 64))
    mixed, mixed_masks = synthetic_set(4, 7, (64, 64), artefacts=0.5)
    every, every_masks = synthetic_set(4, 7, (64, 64), artefacts=True)
    for k in (0, 1):
        np.testing.assert_array_equal(mixed[k], plain[k])
    for k in (2, 3):
        np.testing.assert_array_equal(mixed[k], every[k])
        np.testing.assert_array_equal(mixed_masks[k], every_masks[k])
        assert not np.array_equal(mixed[k], plain[k])


def test_train_on_user_folders(tmp_path):
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for i in range(4):
        s = generate(100 + i, (96, 96))
        tifffile.imwrite(imgs / f"cell_{i}.tif", s.image)
        Image.fromarray(((s.instances > 0) * 255).astype(np.uint8)).save(masks / f"cell_{i}.png")
    rec = train(tmp_path / "mine.pth", images=imgs, masks=masks, steps=4, log=None, **SMALL)
    assert rec["source"]["n_images"] == 4
    net = load_model(tmp_path / "mine.pth")
    assert net.mask_values == [0, 255] and net.n_classes == 2
    assert predict(tifffile.imread(imgs / "cell_0.tif"), net).shape == (96, 96)


def _folders(tmp_path, make_mask, n=3, side=64):
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    imgs.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    for i in range(n):
        s = generate(300 + i, (side, side))
        tifffile.imwrite(imgs / f"c{i}.tif", s.image)
        tifffile.imwrite(masks / f"c{i}.tif", make_mask(s, np.random.default_rng(i)))
    return imgs, masks


def _never_log(line):
    raise AssertionError(f"training started: {line}")


@pytest.mark.parametrize(
    "make_mask, message",
    [
        (lambda s, rng: np.zeros(s.image.shape, np.uint8), "holds only the value 0: there is nothing to learn"),
        (lambda s, rng: np.full(s.image.shape, 255, np.uint8), "holds only the value 255"),
        (
            lambda s, rng: rng.integers(0, 60000, s.image.shape).astype(np.uint16),
            "more than 256 different values .*Instance labels or images are not masks",
        ),
        (
            lambda s, rng: (s.instances > 0).astype(np.float32) * 0.5,
            "fractional or non-finite values \\(e.g. 0.5\\).*probability map",
        ),
        (lambda s, rng: np.where(s.instances > 0, np.nan, 0).astype(np.float32), "e.g. nan"),
    ],
)
def test_unusable_masks_are_refused_before_training(tmp_path, make_mask, message):
    imgs, masks = _folders(tmp_path, make_mask)
    with pytest.raises(InputError, match=message):
        train(tmp_path / "m.pth", images=imgs, masks=masks, steps=1, log=_never_log, **SMALL)
    assert not (tmp_path / "m.pth").exists()


def test_float_masks_holding_whole_numbers_train(tmp_path):
    imgs, masks = _folders(tmp_path, lambda s, rng: s.classes.astype(np.float32))
    train(tmp_path / "m.pth", images=imgs, masks=masks, steps=2, log=None, **SMALL)
    net = load_model(tmp_path / "m.pth")
    assert net.mask_values == [0, 1, 2] and net.n_classes == 3


@pytest.mark.parametrize(
    "dest, message",
    [
        (lambda t: t, "is a folder; give the checkpoint's file name"),
        (lambda t: t / "missing" / "m.pth", "the folder .*missing does not exist; create it first"),
        (lambda t: t / "imgs" / "c0.tif", "it would overwrite a file in"),
    ],
)
def test_bad_destinations_are_refused_before_training(tmp_path, dest, message):
    imgs, masks = _folders(tmp_path, lambda s, rng: s.classes.astype(np.uint8), n=2)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(InputError, match=message):
        train(dest(tmp_path), images=imgs, masks=masks, steps=1, log=_never_log, **SMALL)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_missing_image_folder_is_named(tmp_path):
    with pytest.raises(InputError, match="--images .*nowhere is not a folder"):
        train(tmp_path / "m.pth", images=tmp_path / "nowhere", masks=tmp_path, steps=1, log=_never_log, **SMALL)


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_shape(tmp_path):
    start = tmp_path / "start.pth"
    train(start, steps=2, seed=1, log=None, **SMALL)
    before = dict(load_model(start).named_parameters())
    rec = train(tmp_path / "tuned.pth", init=start, steps=1, log=None, **{**SMALL, "width": 8, "lr": 1e-9})
    tuned = load_model(tmp_path / "tuned.pth")
    # One step at a negligible rate: the weights are the start's, and its width wins over the recipe's.
    assert tuned.width == 4 and rec["recipe"]["width"] == 4
    for key, value in tuned.named_parameters():
        assert torch.allclose(value, before[key], atol=1e-6), key
    sha = load_model(start).checkpoint_sha256
    assert rec["recipe"]["init"] == {"path": str(start), "sha256": sha, "new_head": False}
    train(tmp_path / "t2.pth", init=start, steps=2, log=None, **SMALL)
    moved = load_model(tmp_path / "t2.pth").state_dict()
    assert not torch.equal(moved["inc.double_conv.0.weight"], before["inc.double_conv.0.weight"])


def test_fewer_than_one_step_or_no_learning_rate_is_refused(tmp_path):
    with pytest.raises(InputError, match="--steps must be at least 1, not 0"):
        train(tmp_path / "m.pth", steps=0, log=_never_log, **SMALL)
    with pytest.raises(InputError, match="--lr must be a positive learning rate such as 5e-4, not -0.1"):
        train(tmp_path / "m.pth", steps=1, log=_never_log, **{**SMALL, "lr": -0.1})


def test_fine_tuning_on_other_classes_makes_a_new_output_layer(tmp_path):
    imgs, masks = _folders(tmp_path, lambda s, rng: ((s.instances > 0) * 255).astype(np.uint8))
    rec = train(tmp_path / "mine.pth", images=imgs, masks=masks, init="bundled", steps=1, log=None, **SMALL)
    net, bundled = load_model(tmp_path / "mine.pth"), load_model()
    assert net.n_classes == 2 and net.mask_values == [0, 255] and rec["recipe"]["init"]["new_head"]
    assert net.width == bundled.width == rec["recipe"]["width"]
    assert net.outc.conv.weight.shape[0] == 2


def test_fine_tuning_a_multichannel_checkpoint_is_refused(tmp_path):
    from napari_unet_gradcam.checkpoint import save_checkpoint
    from napari_unet_gradcam.model import UNet

    save_checkpoint(UNet(3, 2, width=4), tmp_path / "rgb.pth")
    with pytest.raises(InputError, match="takes 3 input channels; training here feeds one"):
        train(tmp_path / "m.pth", init=tmp_path / "rgb.pth", steps=1, log=_never_log, **SMALL)


def test_zoomed_crops_show_nuclei_at_other_pixel_sizes():
    import random

    from napari_unet_gradcam.train import _batch

    yy, xx = np.mgrid[:256, :256]
    disk = ((yy - 128) ** 2 + (xx - 128) ** 2 <= 8**2).astype(np.int64)
    imgs, masks = [disk.astype(np.float32)], [disk]
    native = float(disk.sum())

    def areas(zoom):
        x, y = _batch(random.Random(0), imgs, masks, 64, 400, zoom)
        whole = [m for m in y.numpy() if m.any() and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())]
        assert set(np.unique(y.numpy())) <= {0, 1} and x.shape == (400, 1, 64, 64)
        return [m.sum() / native for m in whole]

    plain, zoomed = areas(0.0), areas(1.0)
    assert np.allclose(plain, 1.0)  # no zoom: every whole disk keeps its size
    assert min(zoomed) < 0.4 and max(zoomed) > 2.5  # x0.5..x2 in each direction: area x0.25..x4
