"""The documentation lives in the repository and works in a fresh clone.

- No file refers to documents or data outside the repository (the design and modelling notes are
  docs/design.md and docs/modeling.md; reference data is copied under validation/data/).
- Every relative link in README.md and docs/*.md points to a file or folder that exists.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("../" + "shared", "shared/" + "reference", "DESIGN" + ".md", "MODELING" + ".md")
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".venv", "build", "dist"}


def _repo_files() -> list[Path]:
    """Files git tracks or would track (untracked but not ignored); a plain walk without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        paths = [p for p in ROOT.rglob("*")
                 if not any(part in SKIP_DIRS or part.endswith(".egg-info")
                            for part in p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file()]


def test_no_reference_outside_the_repository():
    hits = []
    for path in _repo_files():
        data = path.read_bytes()
        if not any(word.encode() in data for word in FORBIDDEN):
            continue
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            for word in FORBIDDEN:
                if word in line:
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {word!r}")
    assert not hits, ("files refer to documents outside the repository (use docs/design.md, "
                      "docs/modeling.md or the copy under validation/data/):\n" + "\n".join(hits))


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def _links(text: str) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", text))
    return _INLINE.findall(text) + _REFDEF.findall(text)


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path):
    assert doc.is_file(), f"{doc.relative_to(ROOT)} is missing"
    broken = []
    for target in _links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (http:, mailto:, ...) or an anchor in the same page
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (doc.parent / path).resolve()
        if not resolved.exists():
            broken.append(target)
        elif ROOT not in (resolved, *resolved.parents):
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_design_and_modeling_notes_exist():
    for name in ("design.md", "modeling.md"):
        assert (ROOT / "docs" / name).is_file()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/design.md" in readme and "docs/modeling.md" in readme
