"""Test against the oldest releases the dependency bounds allow, and against the newest.

    make test-oldest    # or: nox -s oldest -- -m "not slow"
    make test-newest

Each session makes its own virtual environment under .nox/, installs torch from ``TORCH_SPEC``
(default: the CPU wheel ``torch==2.13.0``; an unpinned torch pulls gigabytes of CUDA builds),
then the package with its testing extra, and runs pytest under Xvfb. "oldest" pins every other
``name>=version`` of ``[project].dependencies`` and of the ``napari`` extra to ``name==version``;
to try the torch bound too, pass e.g. ``TORCH_SPEC="torch==2.3.0 --index-url https://download.pytorch.org/whl/cpu"``.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
QT = {"QT_QPA_PLATFORM": "xcb"}  # Qt's offscreen platform gives vispy no OpenGL context
XVFB = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"]
nox.options.sessions = ["oldest", "newest"]


def lower_bound_pins() -> list[str]:
    """``name==version`` for each ``name>=version`` dependency except torch (TORCH_SPEC decides it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["napari"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9.]*)", dep)
        if m is None:
            raise ValueError(f"dependency {dep!r} has no plain lower bound to pin")
        if m[1].lower() != "torch":
            pins.append(f"{m[1]}=={m[2]}")
    return pins


def install_and_test(session: nox.Session, *constraints: str) -> None:
    session.install(*shlex.split(os.environ.get("TORCH_SPEC", "torch==2.13.0")))
    if constraints:
        path = Path(session.create_tmp()) / "oldest.txt"
        path.write_text("\n".join(constraints) + "\n")
        session.install("-e", ".[testing]", "-c", str(path))
    else:  # a fresh venv gets the latest releases; no --upgrade, which would replace TORCH_SPEC's torch
        session.install("-e", ".[testing]")
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run(*XVFB, "python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs, external=True, env=QT)


@nox.session
def oldest(session: nox.Session) -> None:
    """The lower bounds of pyproject.toml, pinned."""
    install_and_test(session, *lower_bound_pins())


@nox.session
def newest(session: nox.Session) -> None:
    """The latest releases of everything (torch from TORCH_SPEC)."""
    install_and_test(session)
