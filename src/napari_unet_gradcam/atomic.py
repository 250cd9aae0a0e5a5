"""Writing files so that a failure, a signal or a planted link never damages anything.

Each file is first written under a fresh name made by ``tempfile.mkstemp`` in the destination
folder (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random part): a link planted under any name we could
use is never followed, and an existing file is never opened for writing. Only when every file of a
set is complete are they renamed onto their final names (``os.replace``, atomic within a folder;
it replaces a link found at the final name instead of writing through it).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".part"


def _file_mode() -> int:
    """What ``open()`` would have given a new file (mkstemp's are private, 0o600)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other portable way to read it
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_outputs() -> Iterator[Callable[[str | os.PathLike], BinaryIO]]:
    """``new_file(final)`` returns an open binary file that becomes ``final`` when the block ends.

    If the block raises (including ``KeyboardInterrupt`` and the ``SystemExit`` the CLI raises on
    SIGTERM) every temporary file is removed and no final name is touched. The temporary name keeps
    the final suffix last (``.x_maps.tif.k3j9.part.tif``), so writers that pick a format from the
    name still do.
    """
    made: list[tuple[BinaryIO, Path, Path]] = []

    def new_file(final: str | os.PathLike) -> BinaryIO:
        final = Path(final)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=f"{TEMP_SUFFIX}{final.suffix}")
        raw = io.FileIO(fd, "wb")
        raw.name = tmp  # os.fdopen would name it by its descriptor; writers read the name
        fh = io.BufferedWriter(raw)
        made.append((fh, Path(tmp), final))
        return fh

    try:
        yield new_file
        mode = _file_mode()
        for fh, _, _ in made:
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            fh.close()
        for _, tmp, final in made:
            os.replace(tmp, final)
    except BaseException:
        for fh, tmp, _ in made:
            fh.close()
            tmp.unlink(missing_ok=True)
        raise
