"""BENCHMARKS.md stays a short reference whose commands still run: the scripts, commands and options it names exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featurefield.cli import main

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def claims() -> dict[str, str]:
    """Each ``## `` section of BENCHMARKS.md by its heading."""
    parts = re.split(r"^## (.+)$", BENCHMARKS.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def help_text(capsys, argv: list[str]) -> str:
    try:
        assert main(argv) == 0
    except SystemExit as exit_:  # tyro's --help
        assert exit_.code == 0
    return capsys.readouterr().out


def test_benchmarks_is_a_short_reference_with_a_date_and_command_per_table():
    assert len(BENCHMARKS.read_text().splitlines()) <= 200
    tables = {heading: body for heading, body in claims().items() if "\n| --- " in body}
    assert len(tables) >= 10
    for heading, body in tables.items():
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", body), f"{heading!r} names no date"
        assert re.search(r"`[^`]*(?:bench/|featurefield )[^`]*`", body), f"{heading!r} gives no command"


def test_every_bench_script_named_in_the_docs_exists():
    for doc in (BENCHMARKS, ROOT / "README.md", BENCH / "README.md", BENCH / "infra" / "device_lego.sh"):
        for path in re.findall(r"\bbench/[\w/.-]+\.(?:py|sh)\b", doc.read_text()):
            assert (ROOT / path).is_file(), f"{doc.relative_to(ROOT)} names {path}, which does not exist"


def test_citations_of_benchmarks_name_a_table():
    cited = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "featurefield").rglob("*.py"))]:
        text = re.sub(r"\s+", " ", path.read_text())
        for heading in re.findall(r'BENCHMARKS\.md, "([^"]+)"', text):
            assert heading in claims(), f"{path.relative_to(ROOT)} cites {heading!r}, no heading of BENCHMARKS.md"
            cited += 1
    assert cited


def test_bench_readme_lists_each_script_once():
    listed = re.findall(r"^\| `([\w/.-]+\.(?:py|sh))`", (BENCH / "README.md").read_text(), flags=re.M)
    scripts = [str(p.relative_to(BENCH)) for p in BENCH.rglob("*") if p.suffix in (".py", ".sh")
               and p.name != "__init__.py" and "__pycache__" not in p.parts]
    assert sorted(listed) == sorted(scripts)


def test_benchmark_commands_name_real_cli_commands(capsys):
    commands = {line.split()[0] for line in help_text(capsys, ["--help"]).splitlines() if line.startswith("  ")}
    named = set(re.findall(r"`[^`]*?\bfeaturefield ([a-z][a-z-]*)", BENCHMARKS.read_text()))
    assert {"train", "eval", "demo"} <= named <= commands, f"unknown commands: {sorted(named - commands)}"


@pytest.mark.parametrize("field", ["splat", "nerf"])
def test_benchmark_commands_use_real_training_options(capsys, field):
    options = set(re.findall(rf"--{field}\.[a-z0-9.-]*[a-z0-9]", BENCHMARKS.read_text()))
    offered = set(re.findall(rf"--{field}\.[a-z0-9.-]+", help_text(capsys, ["train", field, "--help"])))
    assert options and options <= offered, f"`featurefield train {field}` has no {sorted(options - offered)}"
