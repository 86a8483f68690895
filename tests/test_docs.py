"""Every document the repository cites is in the repository (a reader who clones it can follow each one)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"(?<![\w/.:-])((?:\.\./)?[\w./-]*[\w-]\.md)\b")
WRITTEN_BY_MIA = {"reproduction.md"}  # output files mia writes at a sweep root: named in the code, not cited


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed
            if name.endswith((".py", ".md", ".yaml", ".sh", ".toml", ".txt")) or name in ("Makefile",)]


def test_every_cited_document_exists():
    missing = []
    for path in tracked_text_files():
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "http://" in line or "https://" in line:
                continue  # links to other sites are not documents of this repository
            for cited in CITATION.findall(line):
                if cited in WRITTEN_BY_MIA:
                    continue
                if not any((base / cited).exists() for base in (REPO, REPO / "docs", path.parent)):
                    missing.append(f"{path.relative_to(REPO)}:{number} cites {cited}")
    assert not missing, "\n".join(missing)
