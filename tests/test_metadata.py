"""What a package index and ``conpool --version`` show: one version everywhere,
metadata that names real files, and a changelog section for the version."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import conpool
from conpool.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_version_comes_from_the_installed_metadata() -> None:
    assert PYPROJECT["version"] == "0.2.0"
    assert conpool.__version__ == importlib.metadata.version("conpool") == PYPROJECT["version"]


def test_conpool_version_on_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conpool", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"conpool {conpool.__version__}\n",
        "",
    )


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"conpool {conpool.__version__}\n"


def test_the_index_shows_classifiers_keywords_authors_and_urls() -> None:
    meta = importlib.metadata.metadata("conpool")
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Framework :: AnyIO" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "connection pool" in (meta["Keywords"] or "")
    assert "conpool developers" in (meta["Author-email"] or meta["Author"] or "")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    # Only absolute http(s) URLs (what an index accepts and can link), each to
    # a file of this repository ("https://HOST/.../blob/main/docs/index.md").
    # None yet: the repository has no public address (see pyproject.toml).
    for label, url in urls.items():
        assert re.match(r"https?://[^/\s]+/", url), f"Project-URL {label} {url!r} is not absolute"
        path = url.split("/blob/main/", 1)[1]
        assert (ROOT / path).is_file(), f"Project-URL {label} -> {path} does not exist"


def test_the_changelog_has_a_section_per_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", text, flags=re.M)
    assert versions[:2] == [PYPROJECT["version"], "0.1.0"]
