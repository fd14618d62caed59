"""The project's set-up stays true: README quick start, CI, environment.yml vs pyproject."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```(?:\w+)?\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    demo, test = commands
    assert "demo" in demo and "test" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci


def test_environment_yml_parses_and_lists_the_same_dependencies_as_pyproject():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert environment["name"] == "sdexplore"
    python = [d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python and python[0].split("=")[1] >= "3.10"
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    conda_names = {requirement_name(r) for r in pip_section if not r.startswith("-e")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert conda_names == {requirement_name(r) for r in project["dependencies"]}
    assert any(r.startswith("-e") for r in pip_section), "environment.yml must install the package itself"
    assert project["requires-python"] == ">=3.10"
