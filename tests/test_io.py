"""Reading and writing files: nothing half-written, nothing truncated read as if whole."""

import os
import stat

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet_gradcam import InputError
from napari_unet_gradcam.io import atomic_outputs, output_names, read_image, write_result
from napari_unet_gradcam.pipeline import explain

from .conftest import tiny_unet


def test_outputs_appear_only_when_all_are_complete(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_outputs() as new_file:
        new_file(tmp_path / "a.txt").write(b"new")
        new_file(tmp_path / "b.txt").write(b"new")
        raise RuntimeError("failed half way")
    assert sorted(os.listdir(tmp_path)) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"
    with pytest.raises(KeyboardInterrupt), atomic_outputs() as new_file:
        new_file(tmp_path / "a.txt").write(b"new")
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
    with atomic_outputs() as new_file:
        new_file(tmp_path / "a.txt").write(b"new")
        new_file(tmp_path / "b.txt").write(b"new")
    assert (tmp_path / "a.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]


def test_outputs_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        with atomic_outputs() as new_file:
            new_file(tmp_path / "x.bin").write(b"1")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o640  # not mkstemp's private 0o600


def test_write_result_writes_exactly_the_names_the_cli_checks(tmp_path):
    img = np.random.default_rng(1).random((32, 40)).astype(np.float32)
    res = explain(img, tiny_unet(width=4), layers=("up3", "up4"))
    files = write_result(res, img, tmp_path, "x", probabilities=True, instances=True)
    assert [p.name for p in files] == output_names("x", probabilities=True, instances=True)
    assert sorted(os.listdir(tmp_path)) == sorted(output_names("x", probabilities=True, instances=True))


@pytest.fixture
def photo():
    rng = np.random.default_rng(3)
    return (rng.random((60, 80, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_png_and_jpeg_are_refused(tmp_path, photo, suffix):
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(photo).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert read_image(whole)[0].shape == (60, 80, 3)
    kind = {".jpg": "JPEG", ".png": "PNG"}[suffix]
    with pytest.raises(InputError, match=f"cut{suffix}: the {kind} file is truncated"):
        read_image(cut)


def test_jpeg_with_bytes_after_its_end_still_reads(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "tail.jpg")
    with open(tmp_path / "tail.jpg", "ab") as f:
        f.write(b"trailer from a camera")
    assert read_image(tmp_path / "tail.jpg")[0].shape == (60, 80, 3)


def test_declared_png_size_is_checked_before_decoding(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "p.png")
    with pytest.raises(InputError, match="declares a 60 x 80 x 3 image"):
        read_image(tmp_path / "p.png", max_bytes=60 * 80 * 3 * 4 - 1)


def test_broken_tiff_is_one_message_without_tifffile_log_lines(tmp_path, caplog):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="broken.tif: not a readable TIFF"):
        read_image(tmp_path / "broken.tif")
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]  # each would be a stderr line
    tifffile.imwrite(tmp_path / "fine.tif", np.zeros((4, 4), np.uint8))
    assert read_image(tmp_path / "fine.tif")[0].shape == (4, 4)


def test_unopenable_image_is_an_input_error_not_a_write_error(tmp_path, monkeypatch):
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    real_open = open

    def refuse(file, *args, **kwargs):  # the OS refusing, as for a file without read permission
        if str(file).endswith("p.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(InputError, match="p.png: could not be opened \\(Permission denied\\)"):
        read_image(tmp_path / "p.png")


def test_a_zarr_folder_names_the_way_to_explain_it(tmp_path):
    (tmp_path / "big.zarr").mkdir()
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"big\.zarr: a zarr image is read block by block.*--workers"):
        read_image(tmp_path / "big.zarr")
    with pytest.raises(InputError, match="is a directory, not an image"):
        read_image(tmp_path / "plain")
