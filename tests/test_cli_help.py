"""Every command's `--help` reads well: each option described once, placeholders that say what to pass, no
double negatives, no reStructuredText markup."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import subprocess
import sys

import pytest

from featurefield.cli import COMMANDS, main
from featurefield.commands import cli
from featurefield.fields.registry import registered


def _helps() -> dict[str, tuple]:
    """``{name: (function, argv)}``: each command's help, the train subcommands and the fields' own verbs."""
    out = {name: (main, [name, "--help"]) for name in COMMANDS if name != "train"}
    out["train"] = (main, ["train", "--help"])
    for field, spec in registered().items():
        out[f"train {field}"] = (main, ["train", field, "--help"])
        for verb, target in spec.commands:
            if verb != "train":
                module, func = target.split(":")
                fn = getattr(importlib.import_module(f"featurefield.commands.{module}"), func)
                out[f"{verb} ({field} run)"] = (lambda argv, fn=fn, verb=verb: cli(fn, argv, verb, verb), ["--help"])
    return out


HELPS = _helps()


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each help text, 90 columns wide (one column of groups: wider, tyro sets groups side by side)."""
    texts = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "90")
        for name, (fn, argv) in HELPS.items():
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
                fn(argv)
            texts[name] = buffer.getvalue()
    return texts


def option_blocks(text: str) -> list[str]:
    """Each option's (or positional argument's) entry in a help text, as tyro prints it to a terminal (boxes) or
    elsewhere (titles over dashes): its flags and placeholder, then its description, its lines joined by two
    spaces."""
    raws = [raw.rstrip().removesuffix("│").rstrip() for raw in text.splitlines()]
    lines = [raw.strip() for raw in raws]
    blocks: list[list[str]] = []
    current, positional = None, False
    for k, line in enumerate(lines):
        inner = line.strip("│╭╮╰╯").strip()
        body = raws[k].lstrip()[1:] if raws[k].lstrip().startswith("│") else raws[k]
        entry = len(body) - len(body.lstrip()) <= 2  # an entry starts near the edge; its wrapped lines do not
        title = line.startswith("╭") or (k + 1 < len(lines) and lines[k + 1] and set(lines[k + 1]) <= {"-"})
        if title:
            current, positional = None, "positional arguments" in inner
            continue
        if not inner or line.startswith("╰"):
            current = None
            continue
        if set(inner) <= {"─", "-"}:
            continue
        if entry and (inner.startswith("-") or (positional and re.match(r"^[A-Z][A-Z0-9_-]*(\s{2,}|$)", inner))):
            current = [inner]
            blocks.append(current)
        elif current is not None:
            current.append(inner)
    return ["  ".join(b) for b in blocks]


def description(block: str) -> str:
    """What an entry says besides its flags, placeholder and default."""
    parts = re.split(r"\s{2,}", block, maxsplit=1)
    rest = parts[1] if len(parts) > 1 else ""
    return re.sub(r"\((default|default if used): [^)]*\)|\(required\)", "", rest).strip()


def test_every_command_and_field_has_a_help(helps):
    assert {"train splat", "train nerf", "train general", "query (general run)", "eval (general run)"} <= set(helps)
    for name, text in helps.items():
        assert text.startswith("usage:"), f"{name}: {text[:200]}"
        assert option_blocks(text), name


@pytest.mark.parametrize("name", list(HELPS))
def test_help_reads_well(helps, name):
    text = helps[name]
    assert "``" not in text, f"{name}: literal double backticks"
    assert "--no-no-" not in text, f"{name}: a double negative"
    for block in option_blocks(text):
        flags = re.split(r"\s{2,}", block)[0]
        assert not re.search(r"\bSTR\b", flags), f"{name}: {flags!r} has the placeholder STR"
        assert "{None}|" not in flags, f"{name}: {flags!r} offers None"
        if flags.startswith("-h"):
            continue
        assert re.search(r"[a-z]{2}", description(block)), f"{name}: {flags!r} is not described: {block!r}"
        defaults = re.findall(r"\(default\b|\bdefault (?:is|to)\b", block, flags=re.IGNORECASE)
        assert len(defaults) <= 1, f"{name}: {flags!r} states its default {len(defaults)} times: {block!r}"
        assert "(default: None)" not in block, f"{name}: {flags!r} says '(default: None)': {block!r}"


def test_the_parser_sees_option_blocks():
    """The walker above finds an undescribed option, a STR placeholder and a second default (it can fail)."""
    text = ("╭─ options ─╮\n│ --a INT  (default: 1) │\n│ --b STR  the b. (default: x) │\n"
            "│ --c INT  the c (default 3). (default: 3) │\n╰─╯\n")
    a, b, c = option_blocks(text)
    assert description(a) == "" and description(b) == "the b." and "STR" in re.split(r"\s{2,}", b)[0]
    assert len(re.findall(r"\(default\b", c)) == 2


@pytest.mark.parametrize("argv, option", [(["train", "demo", "--steps", "abc"], "--steps"),
                                           (["train", "nerf", "demo", "--bogus", "3"], "--bogus"),
                                           (["render", "--frames", "x"], "RUN"),
                                           (["export", "somewhere", "--no-such-flag"], "--no-such-flag")])
def test_a_value_tyro_cannot_parse_is_one_line(argv, option):
    """tyro's multi-line error panel is said in one line naming the option, with exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "featurefield.cli", *argv], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and option in lines[0] and lines[0].startswith(f"featurefield {argv[0]}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
