"""The documentation cannot drift from the code: every Python block of README.md and docs/ runs against a tiny
random-weight checkpoint, every CLI example runs (on that checkpoint, or with --help), every public name is on
the usage page, every link and anchor between the pages resolves, and the results tables are what
benchmarks/tables.py generates from the committed JSON.

Conventions the documents follow (and this test enforces):
- ```python blocks run as written, each in a fresh namespace, in a scratch folder; the only substitution is
  the checkpoint path "path/to/encodec_32khz" -> the tiny checkpoint.
- ```bash blocks: each line that starts with `jasco-fast`, `python -m jasco_fast` or `torchrun` is run with that
  substitution, in a scratch folder holding latents/ (latent files) and tokens/ (code files).
- A block preceded by `<!-- docs-test: help -->` runs each command's subcommand with --help instead (a full-size
  decode, a compiler, several processes); `<!-- docs-test: skip (reason) -->` does not run a block, and must say
  why.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import write_transformers_codes_dir

import jasco_fast

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CHECKPOINT = "path/to/encodec_32khz"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- docs-test: (help|skip \((?P<reason>[^)]*)\)) -->\s*$")
COMMAND = re.compile(r"^(jasco-fast|python -m jasco_fast|torchrun)\b")


def _blocks(lang: str):
    """(document, index, marker, code) for every fenced block of a language."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for i, m in enumerate(FENCE.finditer(text)):
            if m.group(1) != lang:
                continue
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.search(before)
            out.append(pytest.param(doc, marker, m.group(2), id=f"{doc.relative_to(ROOT)}#{i}"))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random-weight transformers EnCodec folder with codebooks (decoder and quantizer)."""
    path, _ = write_transformers_codes_dir(tmp_path_factory.mktemp("docs_ckpt"), seed=3)
    return path


@pytest.fixture
def scratch(tmp_path, checkpoint, monkeypatch):
    """A scratch folder with latent and code files, as the CLI examples expect; the working directory."""
    d = jasco_fast.load_decoder(checkpoint).config.dimension
    (tmp_path / "latents").mkdir()
    (tmp_path / "tokens").mkdir()
    gen = torch.Generator().manual_seed(0)
    torch.save(torch.randn(40, d, generator=gen), tmp_path / "latents" / "a.pt")
    torch.save(torch.randn(2, 30, d, generator=gen), tmp_path / "latents" / "b.pt")
    np.save(tmp_path / "latents" / "c.npy", torch.randn(1, 40, d, generator=gen).numpy())
    torch.save(torch.randint(0, 16, (4, 30), generator=gen), tmp_path / "tokens" / "t.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_conventions_are_used():
    assert _blocks("python") and _blocks("bash")
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            if "docs-test" in line:
                assert MARKER.search(line), f"{doc}: malformed marker {line!r}"
                reason = MARKER.search(line).group("reason")
                assert reason is None or reason.strip(), f"{doc}: a skipped block must say why"


@pytest.mark.parametrize("doc, marker, code", _blocks("python"))
def test_python_block_runs(doc, marker, code, checkpoint, scratch, one_thread):
    if marker is not None:
        assert marker.group("reason"), f"{doc}: only skip markers apply to Python blocks"
        pytest.skip(f"not run: {marker.group('reason')}")
    code = code.replace(CHECKPOINT, str(checkpoint))
    exec(compile(code, f"{doc.name} block", "exec"), {"__name__": "__docs__"})


def _commands(code: str):
    for line in code.splitlines():
        line = line.strip()
        if COMMAND.match(line):
            yield line.split(" #", 1)[0].strip()


def _subcommand(argv: list[str]) -> str:
    if argv[0] == "torchrun":
        argv = argv[argv.index("jasco_fast") + 1 :]
    elif argv[0] == "python":
        argv = argv[3:]
    else:
        argv = argv[1:]
    return argv[0]


@pytest.mark.parametrize("doc, marker, code", _blocks("bash"))
def test_cli_examples_run(doc, marker, code, checkpoint, scratch):
    commands = list(_commands(code))
    if not commands:
        pytest.skip("no jasco-fast command in this block (make / pip)")
    if marker is not None and marker.group("reason"):
        pytest.skip(f"not run: {marker.group('reason')}")
    for command in commands:
        if marker is not None:  # help
            argv = [sys.executable, "-m", "jasco_fast", _subcommand(shlex.split(command)), "--help"]
            run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        else:
            line = command.replace(CHECKPOINT, shlex.quote(str(checkpoint)))
            line = re.sub(r"^(jasco-fast|python -m jasco_fast)", f"{shlex.quote(sys.executable)} -m jasco_fast", line)
            assert not line.startswith("torchrun"), "torchrun examples belong in a help block"
            run = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=300, cwd=scratch)
        assert run.returncode == 0, f"{doc.name}: `{command}` failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"


def test_every_public_name_is_on_the_usage_page():
    usage = (ROOT / "docs" / "usage.md").read_text()
    missing = [name for name in jasco_fast.__all__ if not re.search(rf"`{re.escape(name)}\b", usage)]
    assert not missing, f"docs/usage.md does not mention {missing}"


def test_every_cli_option_is_on_the_usage_page():
    from jasco_fast import cli

    usage = (ROOT / "docs" / "usage.md").read_text()
    parser = cli.build_parser() if hasattr(cli, "build_parser") else None
    if parser is None:
        pytest.skip("jasco_fast.cli has no build_parser()")
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, p in sub.choices.items():
        assert f"`{name}" in usage or f"**`{name}" in usage, f"subcommand {name} missing"
        for action in p._actions:
            for flag in action.option_strings:
                hidden = action.help == "==SUPPRESS=="
                if flag.startswith("--") and flag != "--help" and not hidden and f"`{flag}" not in usage:
                    missing.append(f"{name} {flag}")
    assert not missing, f"docs/usage.md does not mention {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_links_and_anchors_resolve():
    broken = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text())
        text = re.sub(r"`[^`\n]*`", "", text)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and (dest.suffix != ".md" or anchor not in _anchors(dest)):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_no_document_points_to_the_old_notes():
    """The notes became docs/design/; only a results JSON's own recorded note (a generated table) may name them."""
    generated = re.compile(r"<!-- results: .*?<!-- /results -->", re.S)
    for doc in DOCS:
        assert "NOTES_" not in generated.sub("", doc.read_text()), doc


def test_results_tables_are_generated_from_the_json():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert set(DOCS) <= set(tables.DOCUMENTS)
    for doc in DOCS:
        for m in tables.BLOCK.finditer(doc.read_text()):
            want = tables.table(tables.RESULTS / m.group("name"), m.group("part"))
            got = m.group(0)[len(m.group(1)) : -len(m.group(4))]
            assert got == want + "\n", f"{doc.name}: {m.group('name')} differs: python benchmarks/tables.py --write"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 12_500
