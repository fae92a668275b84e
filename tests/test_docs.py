"""Every Python block in the README and the documentation runs, and prints what it says.

Blocks are found automatically in README.md, docs/**/*.md and the files the docs
include with ``--8<--``. Each one runs as its own program (``python -W error -c``)
in a temporary directory, and must exit 0 with nothing on stderr. The convention
a block may use, written as an HTML comment on the line before its fence (invisible
on GitHub and on the site):

``<!-- needs: redis, dns -->``
    the test starts those servers first and puts their real ports into the code in
    place of the well-known ones the page shows (see :data:`NEEDS`).
``<!-- not run: why -->``
    a fragment that is not a program; the reason is required, and such blocks are
    kept rare (:data:`MAX_NOT_RUN`).

A ```` ```text title="Output" ```` fence right after a block is the block's expected
stdout, compared exactly (after the same port substitution).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import conpool
from pgserver import PostgresServer
from servers import (
    POOL_ADDRESSES,
    POOL_RECORDS,
    DnsmasqServer,
    EchoServer,
    MicrosocksServer,
    NginxServer,
    RedisServer,
    unused_port,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: At most this many blocks may be marked ``not run``.
MAX_NOT_RUN = 3

#: The names a Kubernetes headless service has in the recipe, as dnsmasq serves them.
K8S_RECORDS = {"echo.default.svc.cluster.local": POOL_ADDRESSES}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>needs|not run):\s*(?P<value>.*?)\s*-->\s*$")
_INCLUDE = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+)"\s*$', flags=re.M)
_OUTPUT_INFO = 'text title="Output"'


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    needs: tuple[str, ...] = ()
    not_run: str | None = None
    output: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclasses.dataclass(frozen=True)
class _Fence:
    line: int
    info: str
    body: str
    marker: re.Match[str] | None
    follows_previous: bool  # only blank lines since the previous fence ended


def sources() -> list[Path]:
    """README.md, every page under docs/, and the files the pages include."""
    pages = sorted(DOCS.rglob("*.md"))
    included = {
        (ROOT / m["path"]).resolve() for page in pages for m in _INCLUDE.finditer(page.read_text())
    }
    return [README, *pages, *sorted(included - set(pages) - {README})]


def _fences(path: Path) -> list[_Fence]:
    lines = path.read_text().splitlines()
    fences: list[_Fence] = []
    i, previous_end = 0, -10
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j].removeprefix(indent))
            j += 1
        before = [line for line in lines[previous_end + 1 : i] if line.strip()]
        above = next((line for line in reversed(lines[:i]) if line.strip()), "")
        fences.append(
            _Fence(
                line=i + 1,
                info=m["info"].strip(),
                body="".join(f"{line}\n" for line in body),
                marker=_MARKER.match(above),
                follows_previous=not before,
            )
        )
        previous_end, i = j, j + 1
    return fences


def blocks(path: Path) -> list[Block]:
    """The Python blocks of one Markdown file, with their markers and expected output."""
    found: list[Block] = []
    fences = _fences(path)
    for n, fence in enumerate(fences):
        if fence.info.split(" ", 1)[0] not in ("python", "py", "python3"):
            continue
        needs: tuple[str, ...] = ()
        not_run = None
        if fence.marker is not None:
            if fence.marker["kind"] == "needs":
                needs = tuple(n.strip() for n in fence.marker["value"].split(",") if n.strip())
            else:
                not_run = fence.marker["value"]
        following = fences[n + 1] if n + 1 < len(fences) else None
        output = None
        if following is not None and following.follows_previous:
            if following.info == _OUTPUT_INFO:
                output = following.body
        found.append(Block(path, fence.line, fence.body, needs, not_run, output))
    return found


#: Pages whose blocks are fragments that a test of their own runs (with the names the
#: fragments expect): page -> that test. Their blocks are not run again here.
COVERED_ELSEWHERE = {"docs/lifecycle.md": "tests/test_docs_lifecycle.py"}

ALL_BLOCKS = [block for path in sources() for block in blocks(path)]
RUNNABLE = [
    block
    for block in ALL_BLOCKS
    if block.not_run is None and str(block.path.relative_to(ROOT)) not in COVERED_ELSEWHERE
]


# -- the servers a block may ask for ------------------------------------------------

Starter = Callable[[contextlib.ExitStack, Path], int]


def _redis(stack: contextlib.ExitStack, tmp: Path) -> int:
    return stack.enter_context(RedisServer(tmp / "redis")).port


def _postgres(stack: contextlib.ExitStack, tmp: Path) -> int:
    return stack.enter_context(PostgresServer()).port


def _echo(stack: contextlib.ExitStack, tmp: Path) -> int:
    return stack.enter_context(EchoServer()).port


def _echo4(stack: contextlib.ExitStack, tmp: Path) -> int:
    port = unused_port(extra_hosts=POOL_ADDRESSES)
    for ip in POOL_ADDRESSES:
        stack.enter_context(EchoServer(ip, port))
    return port


def _nginx(stack: contextlib.ExitStack, tmp: Path) -> int:
    return stack.enter_context(NginxServer(tmp / "nginx")).port


def _nginx4(stack: contextlib.ExitStack, tmp: Path) -> int:
    return stack.enter_context(NginxServer(tmp / "nginx4", addresses=POOL_ADDRESSES)).port


def _dns(stack: contextlib.ExitStack, tmp: Path) -> int:
    records = {**POOL_RECORDS, **K8S_RECORDS}
    return stack.enter_context(DnsmasqServer(tmp / "dns", records)).port


def _socks5(stack: contextlib.ExitStack, tmp: Path) -> int:
    proxy = MicrosocksServer(tmp / "socks5", username="user", password="secret")
    return stack.enter_context(proxy).port


#: need -> (the port the page shows, what starts the server and returns its real port).
NEEDS: dict[str, tuple[str, Starter]] = {
    "redis": ("6379", _redis),  # redis-server on 127.0.0.1
    "postgres": ("5432", _postgres),  # PostgreSQL on 127.0.0.1, user postgres, trust
    "echo": ("7000", _echo),  # an echo server on 127.0.0.1
    "echo4": ("7000", _echo4),  # echo servers on one port of 127.0.0.11-14
    "nginx": ("8080", _nginx),  # nginx answering "200 ok" on 127.0.0.1
    "nginx4": ("8080", _nginx4),  # nginx on one port of 127.0.0.11-14
    "dns": ("5353", _dns),  # dnsmasq: pool.test and echo.default.svc.cluster.local -> .11-14
    "socks5": ("1080", _socks5),  # microsocks on 127.0.0.1, user "user", password "secret"
}
REAL_SERVERS = {"redis", "postgres", "nginx", "nginx4", "dns", "socks5"}


def _param(block: Block) -> object:
    marks = [pytest.mark.realserver] if REAL_SERVERS & set(block.needs) else []
    return pytest.param(block, id=block.name, marks=marks)


def run_program(code: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=cwd,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_block_runs_and_prints_what_the_page_shows(block: Block, tmp_path: Path) -> None:
    unknown = [need for need in block.needs if need not in NEEDS]
    assert not unknown, f"{block.name}: unknown needs {unknown}; known: {sorted(NEEDS)}"
    shown = [NEEDS[need][0] for need in block.needs]
    assert len(set(shown)) == len(shown), f"{block.name}: two needs share one port: {shown}"
    code, expected = block.code, block.output
    with contextlib.ExitStack() as stack:
        for need in block.needs:
            port, start = NEEDS[need]
            real = str(start(stack, tmp_path))
            pattern = rf"(?<![0-9]){port}(?![0-9])"
            assert re.search(pattern, code), f"{block.name} needs {need} but never uses {port}"
            code = re.sub(pattern, real, code)
            if expected is not None:
                expected = re.sub(pattern, real, expected)
        out = run_program(code, tmp_path)
    if expected is not None:
        assert out == expected


def test_every_block_type_checks(tmp_path: Path) -> None:
    """mypy --strict, with the project's settings, over every block as its own module."""
    for n, block in enumerate(RUNNABLE):
        (tmp_path / f"block_{n:03d}.py").write_text(f"# {block.name}\n{block.code}")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / ".mypy_cache"), "--no-error-summary", str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,
    )  # fmt: skip
    names = {f"block_{n:03d}.py": block.name for n, block in enumerate(RUNNABLE)}
    report = re.sub(r"\S*(block_\d+\.py):(\d+)", lambda m: f"{names[m[1]]} (+{m[2]})", done.stdout)
    assert done.returncode == 0, report + done.stderr


# -- the convention itself -------------------------------------------------------------


def _outside_examples(text: str) -> str:
    """The text without ````-fenced regions, which show Markdown rather than run it."""
    return re.sub(r"^(`{4,})[^\n]*\n.*?^\1[ \t]*$", "", text, flags=re.M | re.S)


def test_blocks_are_found_on_every_page_that_has_them() -> None:
    pages = {block.path for block in ALL_BLOCKS}
    assert README in pages
    assert len(RUNNABLE) >= 25, len(RUNNABLE)
    for path in sources():
        text = _outside_examples(path.read_text())
        opened = len(re.findall(r"^[ \t]*```(?:python|py|python3)\b", text, flags=re.M))
        assert opened == len(blocks(path)), f"{path}: a python fence the parser missed"


@pytest.mark.parametrize(("page", "test"), sorted(COVERED_ELSEWHERE.items()))
def test_pages_covered_elsewhere_have_their_test(page: str, test: str) -> None:
    assert (ROOT / page).is_file()
    assert page in (ROOT / test).read_text(), f"{test} does not read {page}"


def test_not_run_blocks_are_rare_and_say_why() -> None:
    not_run = [block for block in ALL_BLOCKS if block.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, [b.name for b in not_run]
    for block in not_run:
        assert len(block.not_run or "") >= 10, f"{block.name}: say why it is not run"


def test_every_marker_belongs_to_a_python_block() -> None:
    # A marker before anything else (a prose line, a text fence) would be ignored.
    for path in sources():
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if _MARKER.match(line):
                after = next((x for x in lines[n + 1 :] if x.strip()), "")
                assert re.match(r"\s*```(python|py|python3)\b", after), f"{path}:{n + 1}"


def test_output_blocks_follow_a_python_block() -> None:
    outputs = sum(block.output is not None for block in ALL_BLOCKS)
    declared = sum(
        len(
            re.findall(
                rf"^[ \t]*```{re.escape(_OUTPUT_INFO)}$",
                _outside_examples(p.read_text()),
                flags=re.M,
            )
        )
        for p in sources()
    )
    assert outputs == declared


# -- the README ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["scripts/stress", "scripts/test"])
def test_the_two_commands_are_at_the_top_and_executable(command: str) -> None:
    top = README.read_text().split("\n## ", 1)[0]
    assert f"{command} " in top
    path = ROOT / command
    assert path.is_file() and path.stat().st_mode & 0o111


def test_readme_links_point_at_files_in_the_repository() -> None:
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), f"README links {link}, which does not exist"
        assert not link.startswith(".."), f"README links outside the repository: {link}"


def test_the_docs_never_point_outside_the_repository() -> None:
    for path in [README, *DOCS.rglob("*.md")]:
        assert "../shared" not in path.read_text(), path


# -- the API reference -----------------------------------------------------------------


def test_every_public_name_has_a_reference_entry() -> None:
    reference = "\n".join(p.read_text() for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: conpool\.(\w+)", reference, flags=re.M))
    public = set(conpool.__all__) - {"__version__"}
    assert public <= documented, sorted(public - documented)
    assert "__version__" in reference
