"""Files made to hurt: tiny files that declare huge data, and links planted where we write.

Each attack is built here, small and fast; the ones that would allocate gigabytes if the check
failed run in a subprocess under an address-space limit (RLIMIT_AS), so a regression shows up as
a failed assertion, not as this test run being killed.
"""

import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_gradcam import CheckpointError, load_model, save_checkpoint
from napari_unet_gradcam.checkpoint import MAX_ARCHIVE_BYTES, MAX_WIDTH
from napari_unet_gradcam.io import output_names, read_image, write_result
from napari_unet_gradcam.pipeline import explain

from .conftest import tiny_unet

GiB = 1 << 30


def run_limited(code: str, headroom: int = GiB) -> tuple[str, int]:
    """Run one line of ``code`` in a fresh interpreter allowed ``headroom`` bytes of address space
    beyond its imports; return its stdout and peak RSS in MiB."""
    prog = "\n".join(
        [
            "import resource, sys",
            "import numpy, tifffile, torch",
            "import napari_unet_gradcam.io",
            "with open('/proc/self/statm') as f:",
            "    used = int(f.read().split()[0]) * resource.getpagesize()",
            f"resource.setrlimit(resource.RLIMIT_AS, (used + {headroom}, resource.RLIM_INFINITY))",
            "try:",
            f"    {code}",
            "except BaseException as exc:",
            "    print('RAISED', type(exc).__name__, exc)",
            # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and exec,
            # so a test run that had grown past 1 GiB made every child look as large.
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]",
            "print('PEAK_MIB', int(hwm) // 1024)",
        ]
    )
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300)
    peak = [ln for ln in r.stdout.splitlines() if ln.startswith("PEAK_MIB")]
    assert peak, r.stdout + r.stderr
    return r.stdout, int(peak[0].split()[1])


# --- checkpoints -------------------------------------------------------------------------------


def zero_stride_checkpoint(path, width=3000):
    """A valid-looking state_dict whose first convolution is a (width, 1, 3, 3) view of one float."""
    sd = dict(tiny_unet(width=4).state_dict())
    sd["inc.double_conv.0.weight"] = torch.zeros(1, 1, 1, 1).expand(width, 1, 3, 3)
    torch.save(sd, path)
    return path


def deflated_zeros(nbytes: int, chunk: int = 1 << 24) -> bytes:
    """A raw deflate stream of ``nbytes`` zeros: one fully flushed block repeated (no back-reference
    crosses a full flush), so gigabytes cost milliseconds to build."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(nbytes, chunk)
    return block * n + c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH)


def zip_bomb_checkpoint(path, nbytes=int(4.2e9)):
    """A real torch checkpoint whose first storage record is replaced by ``nbytes`` deflated zeros."""
    plain = path.with_name("plain.pth")
    torch.save(tiny_unet(width=4).state_dict(), plain)
    out, central = bytearray(), bytearray()
    with zipfile.ZipFile(plain) as zin:
        infos = zin.infolist()
        for info in infos:
            name = info.filename.encode()
            if info.filename.endswith("/data/0"):
                data, method, size, crc = deflated_zeros(nbytes), 8, nbytes, 0
            else:
                data = zin.read(info.filename)
                method, size, crc = 0, len(data), zlib.crc32(data)
            offset = len(out)
            out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
            out += name + data
            central += struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0,
                crc,
                len(data),
                size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            central += name
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(infos), len(infos), len(central), len(out), 0)
    path.write_bytes(bytes(out))
    return path


def test_zero_stride_checkpoint_is_refused_before_building(tmp_path):
    path = zero_stride_checkpoint(tmp_path / "wide.pth")
    assert path.stat().st_size < 400_000
    out, peak = run_limited(f"napari_unet_gradcam.load_model({str(path)!r}, device='cpu')")
    assert "RAISED CheckpointError" in out and "width is 3000" in out and f"limit of {MAX_WIDTH}" in out, out
    assert peak < 1024


def test_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path):
    path = zip_bomb_checkpoint(tmp_path / "bomb.pth")
    assert path.stat().st_size < 6_000_000
    out, peak = run_limited(f"napari_unet_gradcam.load_model({str(path)!r}, device='cpu')")
    assert "RAISED CheckpointError" in out and "would unpack to 3.9 GiB" in out, out
    assert peak < 1024


def test_checkpoint_just_under_the_archive_limit_still_loads(tmp_path):
    path = save_checkpoint(tiny_unet(width=MAX_WIDTH // 16), tmp_path / "fine.pth")
    with zipfile.ZipFile(path) as zf:
        assert sum(i.file_size for i in zf.infolist()) < MAX_ARCHIVE_BYTES
    assert load_model(path).width == MAX_WIDTH // 16


def test_damaged_zip_is_refused_by_us_not_parsed_by_torch(tmp_path):
    path = tmp_path / "damaged.pth"
    path.write_bytes(b"PK\x03\x04" + os.urandom(3000))
    with pytest.raises(CheckpointError, match="damaged.pth is a damaged zip archive"):
        load_model(path)


def _nested(depth):
    d = {}
    for _ in range(depth):
        d = {"a": d}
    return d


@pytest.mark.parametrize(
    "meta, message",
    [
        ("percentile", "entry is of type str, not a dictionary"),
        (5, "entry is of type int, not a dictionary"),
        ({"preprocess": "percentile"}, "'preprocess' is of type str"),
        ({"training": [1, 2]}, "'training' is of type list"),
        ({"training": _nested(5000)}, "nested deeper than 32 levels"),
        ({"class_names": ["x"] * 200_000}, "more than 100000 values"),
    ],
)
def test_metadata_of_the_wrong_type_or_size_gets_one_error(tmp_path, meta, message):
    path = tmp_path / "meta.pth"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # torch.save pickles nesting recursively
    try:
        torch.save({"state_dict": tiny_unet(width=4).state_dict(), "unet_gradcam": meta}, path)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "meta.pth" in str(info.value)


# --- images -------------------------------------------------------------------------------------


def huge_tiff(path, side=50_000, tile=4096):
    """A ~3 MB zlib-tiled TIFF declaring side x side uint8: one compressed zero tile, repeated."""
    encoded = zlib.compress(bytes(tile * tile))
    n = (-(-side // tile)) ** 2
    tifffile.imwrite(
        path, (encoded for _ in range(n)), shape=(side, side), dtype=np.uint8, compression="zlib", tile=(tile, tile)
    )
    return path


def test_tiff_declaring_50000_squared_is_refused_from_its_header(tmp_path):
    path = huge_tiff(tmp_path / "huge.tif")
    assert path.stat().st_size < 4_000_000
    # A process allowed 2 GiB more than its imports: the 2.3 GiB of pixels cannot be read whole.
    out, peak = run_limited(f"napari_unet_gradcam.io.read_image({str(path)!r})", headroom=2 * GiB)
    assert "RAISED InputError" in out and "declares a 50000 x 50000 image" in out and "before reading" in out, out
    assert peak < 1024
    with pytest.raises(Exception, match="9.3 GiB as float32"):
        read_image(path, max_bytes=GiB)


def test_images_within_the_limit_still_read(tmp_path):
    img = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    tifffile.imwrite(tmp_path / "ok.tif", img)
    assert np.array_equal(read_image(tmp_path / "ok.tif", max_bytes=64 * 48 * 4)[0], img)
    with pytest.raises(Exception, match="declares a 64 x 48 image"):
        read_image(tmp_path / "ok.tif", max_bytes=64 * 48 * 4 - 1)


# --- links planted where we write ---------------------------------------------------------------


@pytest.fixture
def small_result():
    net = tiny_unet(width=4)
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    return explain(img, net, layers=("up4",)), img


def _plant_links(folder, names, victim):
    """Links under every name a writer could use: the old fixed `.part` names and the finals."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.part").symlink_to(victim)
    (folder / names[0]).symlink_to(victim)


def test_planted_links_are_never_followed_by_write_result(tmp_path, small_result):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "o"
    _plant_links(out, output_names("img", probabilities=True), victim)
    res, img = small_result
    files = write_result(res, img, out, "img", probabilities=True)
    assert victim.read_text() == "precious"
    # The link at a final name is replaced by the result, not written through.
    assert not (out / "img_labels.tif").is_symlink() and tifffile.imread(out / "img_labels.tif").shape == (32, 32)
    assert {p.name for p in files} <= set(output_names("img", probabilities=True))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_planted_link_is_never_followed_by_save_checkpoint(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    _plant_links(tmp_path / "m", ["model.pth"], victim)
    save_checkpoint(tiny_unet(width=4), tmp_path / "m" / "model.pth")
    assert victim.read_text() == "precious"
    assert load_model(tmp_path / "m" / "model.pth").width == 4


def tile_bomb_tiff(path, side=32768):
    """A 16 x 16 image whose one tile declares side x side (1 GiB decoded at 32768, 1 MB on disk)."""
    encoded = zlib.compress(bytes(side * side), 9)
    tifffile.imwrite(path, iter([encoded]), shape=(16, 16), dtype=np.uint8, compression="zlib", tile=(side, side))
    return path


def test_tiff_tile_far_larger_than_its_image_is_refused(tmp_path):
    path = tile_bomb_tiff(tmp_path / "tile.tif")
    assert path.stat().st_size < 2_000_000
    out, peak = run_limited(f"napari_unet_gradcam.io.read_image({str(path)!r})", headroom=GiB // 2)
    assert "RAISED InputError" in out and "declares tiles of 32768 x 32768 for a 16 x 16 image" in out, out
    assert peak < 1024
