"""docs/method.md: every section the code cites exists, the README links it, and no text refers
users to a document they do not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
SECTIONS = {1: "Local tokens", 2: "Feature alignment", 3: "Cache write", 4: "Feature aggregation",
            5: "Zero-cost inference", 6: "Losses", 7: "Training recipe"}


def _text_files():
    for top in ("src", "tests", "examples", "benchmarks", "docs"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in {".py", ".md", ".toml", ".txt", ".cfg", ".json"} and "__pycache__" not in path.parts:
                yield path
    for name in ("README.md", "pyproject.toml", "MANIFEST.in"):
        if (ROOT / name).is_file():
            yield ROOT / name


@pytest.mark.skipif(not METHOD.is_file(), reason="docs/ is not shipped in this distribution")
def test_method_doc_has_the_cited_sections_in_order():
    text = METHOD.read_text()
    found = [(int(n), title) for n, title in re.findall(r"^## §(\d+) (.+)$", text, flags=re.M)]
    assert [n for n, _ in found] == sorted(SECTIONS)
    for n, title in found:
        assert title.startswith(SECTIONS[n]), (n, title)
    # every citation in code and docs points at a section that exists
    cited = set()
    for path in _text_files():
        for ref in re.findall(r"method\.md[^§\n]{0,3}((?:§\d+[,–\- ]*)+)", path.read_text(errors="replace")):
            cited |= {int(n) for n in re.findall(r"§(\d+)", ref)}
    assert cited and cited <= set(SECTIONS), sorted(cited)


@pytest.mark.skipif(not METHOD.is_file(), reason="docs/ is not shipped in this distribution")
def test_method_doc_maps_paper_notation_to_code_and_explains_the_jargon():
    text = METHOD.read_text()
    for name in ("refiner.cache", "cache_write", "aggregate", "FeatureAlignment", "refiner.fuse",
                 "select_tokens", "semantic_loss", "regularization_loss", "semantic_weight", "momentum"):
        assert f"`{name}" in text or name in text, name
    for term in ("**HM**", "**b2n / xd**", "**CSC**", "**KD_W**", "**J = 9**", "**the release**"):
        assert term in text, term


def test_readme_links_the_method_doc():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"\]\(https://github\.com/[^)]+/docs/method\.md\)", readme)


def test_no_reference_to_an_internal_spec():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _text_files()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r"\bSPEC\b", line)
    ]
    assert offenders == []


def _project_urls() -> dict[str, str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]


def test_project_urls_and_readme_links_work_on_pypi():
    # PyPI shows the README without the repository around it: every link must be absolute
    urls = _project_urls()
    assert set(urls) >= {"Homepage", "Documentation", "Repository", "Issues"}
    base = urls["Repository"].rstrip("/")
    assert base.startswith("https://github.com/")
    assert all(u.startswith(base) for u in urls.values()), urls
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", readme) + re.findall(r'(?:src|href)="([^"]+)"', readme)
    assert targets
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#", "mailto:"))]
    assert relative == []
    ours = [t for t in targets if "github.com/" in t and "/textrefiner" in t and "KaiyangZhou" not in t]
    assert ours and all(t.startswith(base + "/") or t == base for t in ours), ours
    # and each of them names a file that exists in this tree
    for t in ours:
        path = re.sub(rf"^{re.escape(base)}/(?:blob|raw)/main/", "", t).split("#")[0]
        if path != t and (ROOT / "docs").is_dir():
            assert (ROOT / path).exists(), t
