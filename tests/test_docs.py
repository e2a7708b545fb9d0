"""The README and the documentation site (mkdocs.yml, docs/): the site builds with no warning (a broken
link or anchor fails), the README stays one screen long and its links lead somewhere, the layout names
paths that exist, and every command the pages quote names a command, module, script and options that
exist, and every Python, JSON and YAML example parses."""

import argparse
import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT_BYTES = 15_000


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs and mkdocs-material are not installed: the `docs` extra of pyproject.toml is")
        pytest.skip("mkdocs is not installed: run `bash scripts/setup.sh` (the `dev` extra includes `docs`)")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "static-encoder" / "index.html").is_file()


def test_the_readme_fits_on_a_screen_and_its_links_lead_somewhere():
    assert README.stat().st_size <= README_LIMIT_BYTES, (
        f"README.md is {README.stat().st_size:,} bytes (limit {README_LIMIT_BYTES:,}): "
        "move the detail into a page under docs/ and link it")
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    for target in targets:
        if re.match(r"^[a-z]+://", target):
            continue
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), f"README.md links to {target}, which does not exist"
    for name in ("bash scripts/demo.sh", "bash scripts/test.sh"):  # the two set-up commands
        assert name in text


def _code_spans(text: str) -> list[str]:
    """Fenced blocks (line by line) and inline code spans (which may wrap), whitespace collapsed."""
    spans, fence = [], None
    lines = []
    for line in text.split("\n"):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence is not None:
            if fence in ("bash", "sh", ""):
                spans.append(line.split(" # ")[0].split("   #")[0])
        else:
            lines.append(line)
    prose = "\n".join(lines)
    spans += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return [span.strip() for span in spans if span.strip()]


def _flags(words: list[str]) -> list[str]:
    flags = []
    for word in words:
        for part in re.split(r"[\[\]|]", word):
            match = re.match(r"^(--[a-z0-9][a-z0-9-]*)", part)
            if match:
                flags.append(match.group(1))
    return flags


def _project_sources(module_path: Path) -> str:
    """A module's source and that of the project modules it imports (where its options may be defined)."""
    source = module_path.read_text(encoding="utf-8")
    texts = [source]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = module_path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                candidate = base.joinpath(*node.module.split("."))
            else:
                candidate = ROOT.joinpath(*node.module.split("."))
            for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                if path.is_file():
                    texts.append(path.read_text(encoding="utf-8"))
    return "\n".join(texts)


def _carrot_options(command: str) -> set[str]:
    from carrot_hub.cli import build_parser

    parser = build_parser(command)
    options: set[str] = set()

    def collect(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)

    collect(parser)
    return options


def _quoted_commands() -> list[tuple[str, str]]:
    found = []
    for page in _pages():
        for span in _code_spans(page.read_text(encoding="utf-8")):
            if re.match(r"^(carrot |python |bash scripts/|accelerate launch )", span):
                found.append((page.relative_to(ROOT).as_posix(), span))
    return found


def test_every_quoted_command_names_what_exists():
    commands = _quoted_commands()
    assert len(commands) > 40  # the pages do quote commands: this test reads them
    carrot_commands = set()
    from carrot_hub.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            carrot_commands = set(action.choices)
    problems = []
    option_cache: dict[str, set[str]] = {}
    for page, span in commands:
        try:
            words = shlex.split(span.replace("…", "").replace("\\", ""))
        except ValueError:
            words = span.split()
        if words[:2] == ["accelerate", "launch"]:
            words = ["python", *[w for w in words[2:] if not w.startswith("--num_processes") and not w.isdigit()]]
        if words[0] == "python" and words[1:3] == ["-m", "carrot_hub.cli"]:
            words = ["carrot", *words[3:]]
        if words[0] == "carrot":
            rest = [w for w in words[1:] if not w.startswith("-")]
            command = rest[0] if rest else None
            if command is None or command.startswith(("[", "<")) or command.isupper():
                continue
            if command not in carrot_commands:
                problems.append(f"{page}: `{span}`: no command `carrot {command}`")
                continue
            if command not in option_cache:
                option_cache[command] = _carrot_options(command)
            known = option_cache[command]
            problems += [f"{page}: `{span}`: `carrot {command}` has no option {flag}"
                         for flag in _flags(words[1:]) if flag not in known]
            continue
        if words[0] == "python" and len(words) > 2 and words[1] == "-m":
            module = words[2]
            if module in ("pytest", "pip", "venv", "mkdocs"):
                continue
            path = ROOT.joinpath(*module.split("."))
            path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__main__.py"
            if not path.is_file():
                problems.append(f"{page}: `{span}`: no module {module} in this repository")
                continue
        elif words[0] in ("python", "bash") and len(words) > 1 and words[1].startswith("scripts/"):
            path = ROOT / words[1]
            if not path.is_file():
                problems.append(f"{page}: `{span}`: no script {words[1]}")
                continue
        else:
            continue
        source = _project_sources(path) if path.suffix == ".py" else path.read_text(encoding="utf-8")
        problems += [f"{page}: `{span}`: {path.relative_to(ROOT)} has no option {flag}"
                     for flag in _flags(words[2:]) if f'"{flag}"' not in source and f"'{flag}'" not in source]
    assert not problems, "\n".join(problems)


def _layout_paths(text: str) -> list[str]:
    return [span for span in re.findall(r"`([^`\s]+)`", text)
            if re.match(r"^[\w.-]+(/[\w.-]*)*$", span) and ("/" in span or re.search(r"\.(py|toml|yml|md)$", span))]


def test_the_layout_names_paths_that_exist():
    readme_layout = README.read_text(encoding="utf-8").split("## Layout", 1)[1].split("\n## ", 1)[0]
    architecture = (DOCS / "architecture.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = []
    for where, text in (("README.md", readme_layout), ("docs/architecture.md", architecture)):
        paths = _layout_paths(text)
        assert len(paths) >= 8, where
        for path in paths:
            if "/" in path:
                exists = (ROOT / path).exists()
            else:  # a bare file name: somewhere in the tree
                exists = (ROOT / path).exists() or any(
                    any((ROOT / top).rglob(path)) for top in ("carrot_hub", "training", "model_card", "scripts"))
            if not exists:
                missing.append(f"{where}: `{path}`")
    assert not missing, "the layout names paths that do not exist:\n" + "\n".join(missing)


def test_every_python_json_and_yaml_example_parses():
    import json

    import yaml

    checked, problems = 0, []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for language, body in re.findall(r"^```(python|json|yaml)\n(.*?)^```", text, re.S | re.M):
            checked += 1
            try:
                {"python": ast.parse, "json": json.loads, "yaml": yaml.safe_load}[language](body)
            except (SyntaxError, ValueError, yaml.YAMLError) as error:
                problems.append(f"{page.relative_to(ROOT)}: a {language} example does not parse ({error}):\n{body[:300]}")
    assert checked > 15
    assert not problems, "\n\n".join(problems)
