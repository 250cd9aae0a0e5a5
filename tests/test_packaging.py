"""What a user installs: the sdist and the wheel built from it, checked as files, offline."""

import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .test_docs import IN_TREE, README, link_targets

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src" / "napari_unet_gradcam" / "napari.yaml"
GUI = ("napari", "magicgui", "qtpy")
SKIP = shutil.ignore_patterns(".git", ".venv", ".nox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def test_top_level_manifest_is_the_package_manifest():
    top = ROOT / "napari.yaml"
    if not top.exists():
        pytest.skip("not a checkout (an unpacked sdist has the copy tested below)")
    assert top.read_bytes() == MANIFEST.read_bytes()
    if top.is_symlink():
        assert top.resolve() == MANIFEST.resolve()


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist, and the wheel ``python -m build`` makes from it, of a copy of this checkout."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("no pyproject.toml: not a source tree")
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)  # building writes egg-info; keep it out of the checkout
    r = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "out"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sdist,) = (tmp / "out").glob("*.tar.gz")
    (wheel,) = (tmp / "out").glob("*.whl")
    return sdist, wheel


@pytest.mark.slow
def test_wheel_carries_the_manifest_as_a_regular_file(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo("napari_unet_gradcam/napari.yaml")
        mode = info.external_attr >> 16
        assert mode == 0 or stat.S_ISREG(mode), oct(mode)  # 0: written without Unix mode, i.e. a file
        assert zf.read(info) == MANIFEST.read_bytes()
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")))
        assert b"napari-unet-gradcam = napari_unet_gradcam:napari.yaml" in entry_points
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    required = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert any("scipy" in ln for ln in required) and not any("opencv" in ln for ln in required), required
    # The core and the CLI install without the GUI stack; the [napari] extra brings it.
    assert any("tqdm" in ln for ln in required) and not any(gui in ln for ln in required for gui in GUI), required
    napari_extra = [ln for ln in metadata.splitlines() if 'extra == "napari"' in ln]
    assert all(any(ln.startswith(f"Requires-Dist: {gui}>=") for ln in napari_extra) for gui in GUI), napari_extra
    assert "Version: 0.1.0\n" in metadata  # no git in the copy: setuptools-scm's fallback_version
    urls = dict(ln.removeprefix("Project-URL: ").split(", ", 1) for ln in metadata.splitlines() if "Project-URL" in ln)
    assert {"Source", "Bug Tracker", "Documentation", "User Support"} <= set(urls), urls
    assert all(u.startswith("https://") for u in urls.values()), urls


@pytest.mark.slow
def test_sdist_carries_the_manifest_and_all_of_tests(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
        for name in ("napari.yaml", "src/napari_unet_gradcam/napari.yaml"):
            assert members[name].isfile(), f"{name} is not a regular file in the sdist"
        assert tf.extractfile(members["napari.yaml"]).read() == MANIFEST.read_bytes()
    tests = {n for n in members if n.startswith("tests/")}
    here = {f"tests/{p.name}" for p in Path(__file__).parent.glob("*.py")}
    assert here <= tests, here - tests  # conftest.py and __init__.py too: the tests run from the sdist
    linked = {m.group(1).rstrip("/") for u in link_targets(README) if (m := IN_TREE.match(u))}
    in_sdist = set(members) | {n.rstrip("/") for n in members}
    assert linked <= in_sdist, linked - in_sdist  # tests/test_docs.py checks them from the sdist too


@pytest.mark.slow
def test_npe2_validates_the_installed_wheel(dists, tmp_path):
    """The wheel unpacked (what pip installs for a pure-Python wheel) and put first on the path."""
    _, wheel = dists
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import napari_unet_gradcam as p; print(p.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site), where
    npe2 = Path(sys.executable).with_name("npe2")
    manifest = site / "napari_unet_gradcam" / "napari.yaml"
    r = subprocess.run([str(npe2), "validate", str(manifest), "--imports"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_version_comes_from_the_git_tag(tmp_path):
    """A checkout tagged v1.2.3 builds version 1.2.3 (setuptools-scm), with no version written in a file."""
    if not (ROOT / "pyproject.toml").exists() or shutil.which("git") is None:
        pytest.skip("needs a source tree and git")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"], ["tag", "v1.2.3"]):
        subprocess.run([*git, *args], cwd=src, check=True, capture_output=True)
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "out"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "out").glob("*.whl")
    assert wheel.name.startswith("napari_unet_gradcam-1.2.3-"), wheel.name
