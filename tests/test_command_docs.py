"""The command reference cannot go stale: every option of every command is on its page under
docs/commands/, and every ``freetumor ...`` invocation shown in the docs or the README (code blocks,
and inline code such as `` `train-seg --synthesis profile` ``) uses only options that command has.

The options come from the CLI itself (the Click command tree behind Typer), so a renamed or removed
option fails here until its page is updated.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from freetumor.cli import app

REPO = Path(__file__).resolve().parents[1]
ROOT = typer.main.get_command(app)
DOC_FILES = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]


def leaves(cmd=ROOT, path=()):
    """(command path, Click command) for every runnable command, groups expanded."""
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from leaves(sub, (*path, name))
    else:
        yield path, cmd


def options(cmd) -> set[str]:
    """Every spelling of every option of ``cmd`` (``--png`` and ``--no-png`` both), and ``--help``."""
    names = {"--help"}
    for p in cmd.params:
        names.update(p.opts)
        names.update(getattr(p, "secondary_opts", ()))
    return names


def resolve(tokens: list[str]):
    """The command that ``tokens`` (after ``freetumor``) names, and how many tokens named it."""
    cmd, used = ROOT, 0
    while hasattr(cmd, "commands") and used < len(tokens) and tokens[used] in cmd.commands:
        cmd = cmd.commands[tokens[used]]
        used += 1
    return cmd, used


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=")[0].rstrip(",;.)") for t in tokens if t.startswith("--")]


def shown_invocations(text: str) -> list[tuple[str, list[str]]]:
    """Every ``freetumor`` command line in fenced blocks (continuations joined, pipes and comments
    cut) and every inline code span that starts with a command name and has an option."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            m = re.match(r"\s*(?:\$\s+)?(?:[A-Z_]+=\S+\s+)*freetumor\s+(.*)", line)
            if m:
                found.append((line.strip(), re.split(r"\s\|\s|\s#\s", m.group(1))[0].split()))
    for span in re.findall(r"`([^`\n]+)`", text):
        tokens = span.split()
        if tokens and tokens[0] == "freetumor":
            tokens = tokens[1:]
        if tokens and tokens[0] in ROOT.commands and flags(tokens):
            found.append((span, tokens))
    return found


def stale_options(text: str) -> list[str]:
    bad = []
    for shown, tokens in shown_invocations(text):
        cmd, used = resolve(tokens)
        if hasattr(cmd, "commands"):
            continue  # a group's own help line
        known = options(cmd) | ({"--version"} if used == 0 else set())
        bad += [f"{shown!r}: {flag}" for flag in flags(tokens[used:]) if flag not in known]
    return bad


LEAVES = list(leaves())


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[" ".join(path) for path, _ in LEAVES])
def test_every_option_is_on_its_command_page(path, cmd):
    page = REPO / "docs" / "commands" / f"{path[0]}.md"
    assert page.exists(), f"no page for `freetumor {' '.join(path)}` in docs/commands/"
    text = page.read_text(encoding="utf-8")
    missing = [o for o in sorted(options(cmd) - {"--help"})
               if o.startswith("--") and not re.search(re.escape(o) + r"(?![\w-])", text)]
    assert not missing, f"{page.name} does not mention {missing} of `freetumor {' '.join(path)}`"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_shown_commands_use_existing_options(doc):
    assert stale_options(doc.read_text(encoding="utf-8")) == []


def test_the_checker_sees_what_it_must():
    """The checker itself: it finds invocations in all three forms and flags a wrong option."""
    text = ("```console\n$ freetumor synthesize --image a.nii.gz \\\n    --no-such-flag 3 | head\n```\n"
            "Run `train-seg --synthesis profile --bogus` or `freetumor lesions fit --out p.json`.\n"
            "```bash\nfreetumor --version\nfreetumor synthesize --png --no-png  # --comment-flag\n```\n")
    assert len(shown_invocations(text)) == 5
    bad = stale_options(text)
    assert len(bad) == 2 and bad[0].endswith("--no-such-flag") and bad[1].endswith("--bogus")
    total = sum(len(shown_invocations(p.read_text(encoding="utf-8"))) for p in DOC_FILES)
    assert total > 100, f"only {total} command lines found in the docs: the pattern has stopped matching"
