"""What an image file declares, checked before it is decoded.

A few-MB compressed file can declare a 50000 x 50000 image; decoding it whole would exhaust memory
with no message. Shapes come from the header (tifffile for TIFF, the IHDR chunk of a PNG, the SOF
segment of a JPEG) and are checked against the memory this process can still use. PNG and JPEG
files must also end properly, so a truncated file is refused instead of decoded as if whole.
"""

from __future__ import annotations

import logging
import math
import mmap
import resource
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError
from .run_plan import system_available_bytes

#: An image is read only if, as float32 (the form the network gets), it takes at most this share of
#: the memory available: the pipeline needs several more arrays of that size.
IMAGE_SHARE_OF_MEMORY = 0.5
#: A TIFF tile may decode to at most this many times the image's own size, or MIN_TILE_LIMIT.
MAX_TILE_OVER_IMAGE = 4
MIN_TILE_LIMIT = 16 << 20

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the end chunk: length 0, type, CRC
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels once decoded
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def memory_for_reading() -> int:
    """Bytes this process may still allocate: free RAM, or less under an address-space limit."""
    free = system_available_bytes()
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * resource.getpagesize()
        except (OSError, ValueError, IndexError):
            used = 0
        free = min(free, max(soft - used, 0))
    return free


def check_declared_size(path: Path, shape: tuple[int, ...], itemsize: int, max_bytes: int | None = None) -> None:
    """Refuse an image whose declared shape would not fit (``max_bytes``: float32 bytes allowed)."""
    need = math.prod(int(s) for s in shape) * max(int(itemsize), 4)
    avail = None
    if max_bytes is None:
        avail = memory_for_reading()
        max_bytes = int(avail * IMAGE_SHARE_OF_MEMORY)
    if need > max_bytes:
        where = f"half the memory available now ({avail / 2**30:.1f} GiB)" if avail is not None else "the limit"
        raise InputError(
            f"{path}: declares a {' x '.join(map(str, shape))} image, {need / 2**30:.1f} GiB as float32, more "
            f"than {where}; refused before reading. Crop or downsample it first (e.g. in Fiji), or use a "
            "machine with more memory."
        )


def check_tiff_chunks(path: Path, shape: tuple[int, ...], chunk: tuple[int, ...], itemsize: int) -> None:
    """Refuse tiles much larger than the image: each is decoded whole, then cropped.

    Strips are clipped to the image by tifffile; tiles are not, so a 16 x 16 image can declare a
    65536 x 65536 tile (4 GiB decoded from a 4 MB file).
    """
    image = math.prod(int(s) for s in shape) * itemsize
    tile = math.prod(int(c) for c in chunk) * itemsize
    if tile > max(MAX_TILE_OVER_IMAGE * image, MIN_TILE_LIMIT):
        raise InputError(
            f"{path}: declares tiles of {' x '.join(map(str, chunk))} for a {' x '.join(map(str, shape))} image "
            f"({tile / 2**20:.0f} MiB each once decoded); refused before reading. Save it again untiled or "
            "with ordinary tiles (e.g. 512 x 512)."
        )


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile logs its own line for a broken file; our error already names the problem."""
    log = logging.getLogger("tifffile")
    before = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = before


def _png_header(data: mmap.mmap, path: Path) -> tuple[tuple[int, ...], int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InputError(f"{path}: not a readable PNG image (no header).")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if data.rfind(_PNG_END) < 0:
        raise InputError(f"{path}: the PNG file is truncated (it has no end chunk); export or copy it again.")
    return (height, width, _PNG_CHANNELS.get(colour, 4)), 2 if depth == 16 else 1


def _jpeg_header(data: mmap.mmap, path: Path) -> tuple[tuple[int, ...], int]:
    pos, shape = 2, None
    while pos + 4 <= len(data) and shape is None:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 10 <= len(data):
            height, width, comps = struct.unpack(">HHB", data[pos + 5 : pos + 10])
            shape = (height, width, comps)
        pos += 2 + length
    if shape is None:
        raise InputError(f"{path}: not a readable JPEG image (no frame header).")
    # Entropy-coded data never holds FF DA or FF D9 (an FF there is followed by 00), so the image is
    # whole only if an end-of-image marker follows its last scan; an EXIF thumbnail's comes earlier.
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise InputError(
            f"{path}: the JPEG file is truncated (its image data has no end marker), so part of the "
            "image is missing; export or copy it again."
        )
    return shape, 1


def plain_header(path: Path) -> tuple[tuple[int, ...], int] | None:
    """Declared (shape, bytes per sample) of a PNG or JPEG, after checking that the file is whole.

    None for other contents (a misnamed file): the decoder recognises those by their bytes itself.
    """
    try:
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except ValueError:  # an empty file cannot be mapped
        raise InputError(f"{path}: the file is empty.") from None
    except OSError as exc:
        raise InputError(
            f"{path}: could not be opened ({exc.strerror or exc}); check that it is readable by you."
        ) from None
    with data:
        if data[:8] == _PNG_SIGNATURE:
            return _png_header(data, path)
        if data[:2] == b"\xff\xd8":
            return _jpeg_header(data, path)
    return None
