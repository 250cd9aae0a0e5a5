"""Training: deterministic for a seed, and trains on a user's own folders."""

import numpy as np
import tifffile
import torch
from PIL import Image

from napari_unet_gradcam import load_model, predict
from napari_unet_gradcam.synthetic import generate
from napari_unet_gradcam.train import train

SMALL = {"n_train": 6, "n_val": 2, "batch": 2, "patch": 64, "width": 4}


def test_same_seed_same_weights(tmp_path):
    a = train(tmp_path / "a.pth", steps=6, seed=3, log=None, **SMALL)
    train(tmp_path / "b.pth", steps=6, seed=3, log=None, **SMALL)
    sa, sb = torch.load(tmp_path / "a.pth", weights_only=True), torch.load(tmp_path / "b.pth", weights_only=True)
    for k, v in sa["state_dict"].items():
        assert torch.equal(v, sb["state_dict"][k]), k
    assert a["history"] and a["history"][-1]["step"] == 6
    net = load_model(tmp_path / "a.pth")
    assert net.class_names == ["background", "nucleus", "boundary"] and net.preprocess["mode"] == "percentile"
    assert net.training_record["recipe"]["seed"] == 3


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
