"""PNG/JPEG reading and the contact sheet, both done with Pillow since OpenCV was dropped."""

import numpy as np
import pytest
from PIL import Image

from napari_unet_gradcam.errors import InputError
from napari_unet_gradcam.io import contact_sheet, png_bytes, read_image
from napari_unet_gradcam.pipeline import ExplainResult

RNG = np.random.default_rng(5)
GREY8 = RNG.integers(0, 256, (21, 17), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (21, 17), dtype=np.uint16)
RGB = RNG.integers(0, 256, (21, 17, 3), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (21, 17, 4), dtype=np.uint8)


@pytest.mark.parametrize("array", [GREY8, GREY16, RGB, RGBA], ids=["grey8", "grey16", "rgb", "rgba"])
def test_png_reads_back_exactly_in_rgb_order(tmp_path, array):
    p = tmp_path / "a.png"
    Image.fromarray(array).save(p)
    data, axes = read_image(p)
    assert axes is None and data.dtype == array.dtype
    np.testing.assert_array_equal(data, array)


def test_palette_and_bilevel_pngs_read_as_the_values_they_stand_for(tmp_path):
    Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    data, _ = read_image(tmp_path / "p.png")
    assert data.shape == RGB.shape and data.dtype == np.uint8 and len(np.unique(data.reshape(-1, 3), axis=0)) <= 8
    Image.fromarray(GREY8 > 127).save(tmp_path / "b.png")
    data, _ = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(data, np.where(GREY8 > 127, 255, 0).astype(np.uint8))


def test_jpeg_reads_close_to_what_was_written(tmp_path):
    smooth = np.add.outer(np.arange(40), np.arange(48)).astype(np.uint8) * 2
    Image.fromarray(smooth).save(tmp_path / "a.JPG", quality=95)
    data, _ = read_image(tmp_path / "a.JPG")
    assert data.shape == smooth.shape and np.abs(data.astype(int) - smooth).mean() < 2


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nnot really", b"hello"], ids=["empty", "truncated", "text"])
def test_broken_png_is_one_input_error(tmp_path, content):
    p = tmp_path / "broken.png"
    p.write_bytes(content)
    # The header check (headers.py) names an empty file before Pillow is asked.
    with pytest.raises(InputError, match="broken.png: (not a readable PNG image|the file is empty)"):
        read_image(p)


def test_truncated_png_after_a_valid_header_is_an_input_error(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(RGB).save(p)
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(InputError, match="cut.png"):
        read_image(p)


def sheet_for(cam_value: float) -> tuple[np.ndarray, np.ndarray]:
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    labels = (image > 0.5).astype(np.uint8)
    cams = {(ly, c): np.full((48, 64), cam_value, np.float32) for ly in ("up3", "up4") for c in (0, 1, 2)}
    res = ExplainResult(labels, np.zeros((3, 48, 64), np.float32), cams, {"class_names": ["bg", "nucleus", "edge"]})
    return image, contact_sheet(image, res)


def test_contact_sheet_layout_colours_and_titles():
    _, sheet = sheet_for(1.0)
    tile_h, tile_w = 22 + 192, 256  # title bar + the image scaled to 256 on its long side
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * tile_h, 3 * tile_w, 3)
    # a map of 1 everywhere is inferno's top colour (252, 255, 164) over the image: yellow-white, little blue
    heat = sheet[tile_h + 22 : 2 * tile_h, :tile_w].reshape(-1, 3).astype(int)
    assert (heat[:, 0] >= 189).all() and (heat[:, 1] >= 191).all() and (heat[:, 2] >= 123).all()
    assert (heat[:, 0] > heat[:, 2]).all()
    # titles are light text on a dark bar; the untitled blanks hold no text
    bar = sheet[tile_h : tile_h + 22, :tile_w]
    assert bar.min() == 32 and bar.max() > 150
    assert sheet[:22, 2 * tile_w :].max() == 32
    # the labels tile tints the foreground (right half of the image) and leaves the background grey
    lab = sheet[22:tile_h, tile_w : 2 * tile_w].astype(int)
    assert (lab[:, :100, 0] == lab[:, :100, 2]).all() and (lab[:, -100:, 2] > lab[:, -100:, 0] + 50).all()


def test_contact_sheet_maps_low_values_dark():
    _, low = sheet_for(0.0)
    _, high = sheet_for(1.0)
    assert low[214 + 22 :].mean() < high[214 + 22 :].mean() - 80


def test_contact_sheet_png_round_trip(tmp_path):
    _, sheet = sheet_for(0.5)
    (tmp_path / "s.png").write_bytes(png_bytes(sheet))
    np.testing.assert_array_equal(read_image(tmp_path / "s.png")[0], sheet)
