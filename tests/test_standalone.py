"""The repository stands on its own: a fresh clone needs nothing beside it.

The development data, the design document and the reference the product replaces once lived in a
`shared/` folder next to the checkout. A clone made anywhere else would then lack them, so this test
clones the committed HEAD into an empty folder and checks, in the clone only, that no tracked file
points outside it. It reads files and runs git; it starts no engine and takes seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

# Spelled in pieces so that this file does not match itself.
SHARED = "shared"
FORBIDDEN = ("../" + SHARED, SHARED + "/data", SHARED + "/DESIGN", SHARED + "/reference")

# Binary files are not scanned; the NUL-byte check below catches any other binary file.
BINARY_SUFFIXES = {".safetensors", ".npz", ".npy", ".png", ".jpg", ".jpeg", ".gif", ".ico", ".gguf", ".bin", ".pt"}

# Inline links and images `[text](target "title")`, and reference definitions `[label]: target`.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
FENCED_CODE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|#)")  # http:, https:, mailto:, ... or an anchor

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of the committed HEAD, in a folder with nothing beside it."""
    target = tmp_path_factory.mktemp("standalone") / "intentlm"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True, timeout=120)
    return target


def tracked_files(clone: Path) -> list[Path]:
    """The files git tracks in the clone (what anyone who clones the repository gets)."""
    out = subprocess.run(["git", "-C", str(clone), "ls-files", "-z"], capture_output=True, check=True)
    return [clone / name for name in out.stdout.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (by suffix or by a NUL byte)."""
    if path.suffix.lower() in BINARY_SUFFIXES or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def markdown_targets(text: str) -> list[str]:
    """The relative link targets of a Markdown text; links inside code are not links."""
    text = INLINE_CODE.sub("", FENCED_CODE.sub("", text))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t)]


def test_no_tracked_file_mentions_the_shared_folder(clone: Path) -> None:
    """No tracked text file names the folder beside the checkout: it does not exist in a clone."""
    hits = []
    for path in tracked_files(clone):
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: editors count only \n
            for needle in FORBIDDEN:
                if needle in line:
                    hits.append(f"{path.relative_to(clone)}:{number}: {needle}")
    assert not hits, "tracked files refer outside the repository:\n" + "\n".join(hits)


def test_markdown_links_stay_inside_and_exist(clone: Path) -> None:
    """Every relative link of a tracked .md file resolves to an existing path inside the clone."""
    root = clone.resolve()
    bad = []
    for path in tracked_files(clone):
        if path.suffix.lower() != ".md":
            continue
        for target in markdown_targets(path.read_text(encoding="utf-8")):
            file_part = target.split("#", 1)[0].split("?", 1)[0]
            if not file_part:
                continue
            resolved = (root / file_part.lstrip("/")) if file_part.startswith("/") else (path.parent / file_part)
            resolved = resolved.resolve()
            where = f"{path.relative_to(clone)}: ({target})"
            if not resolved.is_relative_to(root):
                bad.append(f"{where} points outside the repository")
            elif not resolved.exists():
                bad.append(f"{where} does not exist")
    assert not bad, "Markdown links that break in a clone:\n" + "\n".join(dict.fromkeys(bad))


def test_clone_has_the_data_and_conftest_finds_it(clone: Path) -> None:
    """The development data ships in the clone, and the tests' DATA_DIR points at it there."""
    data = clone / "data" / "smarthome"
    for name in ("smarthome_train.json", "smarthome_test.json", "smarthome_test_multi.json", "smarthome_oos_test.json"):
        assert (data / name).is_file(), f"missing {name} in the clone"

    env = {k: v for k, v in os.environ.items() if k != "INTENTLM_DATA_DIR"}
    code = "import conftest; print(conftest.DATA_DIR.resolve())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=clone / "tests", env=env, capture_output=True, text=True, check=True
    )
    data_dir = Path(out.stdout.strip().splitlines()[-1])
    assert data_dir.is_relative_to(clone.resolve()), f"DATA_DIR {data_dir} is outside the clone"
    assert data_dir == data.resolve()
