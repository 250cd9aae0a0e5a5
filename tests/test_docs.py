"""Links in the README and docs/ point at files that exist.

docs/ is read on GitHub, so its links are relative. The README is also the PyPI and napari hub page,
which render relative links broken: there every link into the project is absolute, on the
repository's main branch, and must name a file (or folder) of this tree.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
REPO = "https://github.com/napari-unet-gradcam/napari-unet-gradcam"
RAW = "https://raw.githubusercontent.com/napari-unet-gradcam/napari-unet-gradcam/main/"
IN_TREE = re.compile(rf"^(?:{re.escape(REPO)}/(?:blob|tree)/main/|{re.escape(RAW)})([^#?]+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def link_targets(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(page.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_in_docs_resolve(page):
    targets = [t.split("#")[0] for t in link_targets(page) if "://" not in t and not t.startswith("#")]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_readme_links_are_absolute():
    relative = [t for t in link_targets(README) if "://" not in t and not t.startswith(("#", "mailto:"))]
    assert not relative, f"PyPI and the napari hub cannot follow these README links: {relative}"


def project_urls() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.findall(r'"(https://[^"]+)"', text[text.index("[project.urls]") :].split("\n[", 1)[0])


@pytest.mark.parametrize("source", ["README.md", "pyproject.toml"])
def test_links_into_the_repository_name_files_of_this_tree(source):
    urls = link_targets(README) if source == "README.md" else project_urls()
    ours = [u for u in urls if u.startswith((REPO, RAW))]
    assert ours, f"no link to the repository in {source}"
    bad = [u for u in ours if u.startswith((f"{REPO}/blob/", f"{REPO}/tree/", RAW)) and not IN_TREE.match(u)]
    assert not bad, f"links not on the main branch: {bad}"
    missing = [u for u in ours if (m := IN_TREE.match(u)) and not (ROOT / m.group(1)).exists()]
    assert not missing, f"{source} links to files that are not in the tree: {missing}"


def test_readme_images_come_raw():
    """GitHub's blob pages are HTML: an image must come from raw.githubusercontent.com to render."""
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    assert images and all(u.startswith(RAW) for u in images), images
