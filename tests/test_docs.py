"""The documentation: README.md, the MkDocs site under docs/, and the stored benchmark results.

- the site builds with ``mkdocs build --strict`` (broken links, anchors and API pages fail);
- no machine paths in the README, the pages or the stored results;
- every image shown exists and says whether it is Real CT or Phantom.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TEXT_SUFFIXES = {".md", ".txt", ".yml", ".yaml", ".json", ".html", ".css", ".js", ".py", ".csv"}

# an absolute path of a machine: temp, work and home folders, Windows drives, the <tmp> placeholder
MACHINE_PATH = re.compile(r"(?<![\w.~-])(/tmp/|/work/|/home/|/root/|/Users/|[A-Za-z]:\\\\?|<tmp>)")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)")
IMAGE_HTML = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]+)\"[^>]*>")
KINDS = ("Real CT", "Phantom")


def readme_and_pages() -> list[Path]:
    return [REPO / "README.md", *sorted(p for p in DOCS.rglob("*") if p.suffix in TEXT_SUFFIXES)]


def stored_results() -> list[Path]:
    return sorted((REPO / "benchmarks" / "results").rglob("*.json"))


def machine_paths(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = MACHINE_PATH.search(line)
            if m:
                found.append(f"{path.relative_to(REPO)}:{n}: {line[max(0, m.start() - 40):m.end() + 40].strip()}")
    return found


def test_machine_path_pattern():
    hits = ["see /tmp/run/x", "`/work/main/src`", "/home/me/ct.nii.gz", "(/root/a)", r"C:\data", "<tmp>/demo"]
    misses = ["benchmarks/results/x.json", "../shared/datasets/a", "fl/work/runs", "https://example.org/home/x",
              "0.75 mm/tmp", "10:0,10:1", "~/data", "w/tmp/x"]
    assert all(MACHINE_PATH.search(s) for s in hits), [s for s in hits if not MACHINE_PATH.search(s)]
    assert not any(MACHINE_PATH.search(s) for s in misses), [s for s in misses if MACHINE_PATH.search(s)]


def test_no_machine_paths_in_readme_and_docs():
    found = machine_paths(readme_and_pages())
    assert not found, "machine paths (write them relative to the repository or the run's folder):\n" + "\n".join(found)


def test_no_machine_paths_in_stored_results():
    found = machine_paths(stored_results())
    assert not found, "machine paths in stored results:\n" + "\n".join(found[:50]) + (
        f"\n... and {len(found) - 50} more" if len(found) > 50 else "")


def image_references() -> list[tuple[Path, int, str, str, str]]:
    """(file, line number, alt text, target, line above) of every image in README.md and docs/*.md."""
    refs = []
    for path in [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        fence = False
        for n, line in enumerate(lines, 1):
            if line.lstrip().startswith("```"):
                fence = not fence
            if fence:
                continue
            above = next((x.strip() for x in reversed(lines[:n - 1]) if x.strip()), "")
            refs += [(path, n, m.group(1), m.group(2), above) for m in IMAGE.finditer(line)]
            refs += [(path, n, "", m.group(1), above) for m in IMAGE_HTML.finditer(line)]
    return refs


def test_every_image_exists_and_says_real_ct_or_phantom():
    refs = image_references()
    assert len(refs) >= 5  # the figures of the README and the pages
    problems = []
    for path, n, alt, target, above in refs:
        where = f"{path.relative_to(REPO)}:{n}: {target}"
        if "://" in target:
            problems.append(f"{where}: an image from the web (keep figures in docs/images/)")
            continue
        if not (path.parent / target.split("#")[0]).is_file():
            problems.append(f"{where}: no such file")
        caption = [alt.strip().lstrip("*_ "), above.lstrip("#*_ ")]
        if not any(c.startswith(KINDS) for c in caption):
            problems.append(f"{where}: its alt text or the line above must start with 'Real CT' or 'Phantom'")
    assert not problems, "\n".join(problems)


def test_readme_links_resolve():
    """The README is read on its own (GitHub, PyPI): its relative links point at files that exist."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in links if "://" not in t and not t.startswith(("#", "mailto:"))]
    assert len(local) >= 20
    missing = sorted({t for t in local if not (REPO / t).exists()})
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_fits_a_newcomer():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, len(lines)
    first = "\n".join(lines[:40])
    assert "make demo" in first and "make test" in first


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install 'freetumor[docs]', or make install-test)")
def test_site_builds_strictly(tmp_path):
    for name in ("material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            pytest.skip(f"{name} is not installed (pip install 'freetumor[docs]')")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-6000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "synthesis" / "index.html").is_file()


def test_benchmarks_store_paths_relative():
    """benchmarks/common.portable: the one rule the benchmark scripts use to keep machine paths out of results."""
    import tempfile

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from common import portable
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    tmp = tempfile.gettempdir()
    text = f"--work {tmp}/fl/work/runs {REPO}/benchmarks/results/a.json {REPO.parent}/shared/datasets/b"
    out = portable(text)
    # a repository kept directly in the temporary folder (a fresh clone in mktemp -d): the run folder is its sibling
    work = "../fl/work/runs" if Path(tmp).resolve() == REPO.parent.resolve() else "fl/work/runs"
    assert out == f"--work {work} benchmarks/results/a.json ../shared/datasets/b"
    assert not MACHINE_PATH.search(out)
