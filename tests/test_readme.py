"""README.md and docs/ stay true: the two-command quickstart, every CLI line parses, every option and metric is documented."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from server.settings import EMBEDDED_REPOSITORY, ServerSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))
DEFAULT_MODEL_PAGE = ROOT / "docs" / "results" / "default-model.md"


def code_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def shell_commands(text: str = README) -> list[list[str]]:
    """Each command of a page's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in code_blocks("bash", text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                words = shlex.split(line)
                commands.append(words[: words.index(">")] if ">" in words else words)  # drop redirection
    return commands


def parsers() -> dict:
    from clients.bench import build_parser as bench
    from clients.rollout import build_parser as rollout
    from exporters.cli import build_export_parser, build_inspect_parser
    from server.cli import build_parser as serve
    from training.average import build_parser as average
    from training.data.cli import build_parser as data
    from training.evaluate import build_parser as evaluate
    from training.sweep.cli import build_parser as sweep
    from training.train import build_parser as train

    return {
        "mfql-data": data,
        "mfql-train": train,
        "mfql-eval": evaluate,
        "mfql-export": build_export_parser,
        "mfql-export inspect": build_inspect_parser,
        "mfql-serve": serve,
        "mfql-rollout": rollout,
        "mfql-bench": bench,
        "mfql-sweep": sweep,
        "mfql-average": average,
    }


def test_quickstart_is_exactly_two_commands_and_ci_runs_the_test_one():
    quickstart = README.split("## Quickstart", 1)[1]
    first_block = re.search(r"```bash\n(.*?)```", quickstart, flags=re.DOTALL).group(1)
    commands = [line.split("#", 1)[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    ci = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert ci[-1] == "make test"


def check_cli_lines(text: str, page: str) -> int:
    """Parse every mfql-* command of the page's bash blocks with its real parser; return how many."""
    known = parsers()
    checked = 0
    for command in shell_commands(text):
        if not command[0].startswith("mfql-"):
            continue
        name = " ".join(command[:2]) if command[:2] == ["mfql-export", "inspect"] else command[0]
        arguments = command[2:] if name == "mfql-export inspect" else command[1:]
        assert name in known, f"{page} uses an unknown command: {' '.join(command)}"
        try:
            known[name]().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"{page} command does not parse: {' '.join(command)}")
        checked += 1
    return checked


def test_every_cli_line_in_the_readme_parses():
    assert check_cli_lines(README, "README.md") >= 9


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_cli_line_in_the_docs_parses(page):
    check_cli_lines(page.read_text(), str(page.relative_to(ROOT)))


def benchmark_source(script: Path) -> str:
    """A benchmark's source with that of the sibling benchmarks it imports options from."""
    source = script.read_text()
    siblings = [
        script.parent / f"{name}.py" for name in re.findall(r"^from (\w+) import", source, re.MULTILINE)
    ]
    return "\n".join([source, *(sibling.read_text() for sibling in siblings if sibling.is_file())])


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda page: str(page.relative_to(ROOT)))
def test_every_benchmark_command_uses_flags_its_script_has(page):
    """`python benchmarks/X.py --flag ... -- <train flags>`: X exists and has --flag; mfql-train takes the rest."""
    train = parsers()["mfql-train"]
    for command in shell_commands(page.read_text()):
        if command[:1] != ["python"] or not command[1].startswith("benchmarks/"):
            continue
        script = ROOT / command[1]
        assert script.is_file(), f"{page.name}: no such benchmark {command[1]}"
        source = benchmark_source(script)
        split = command.index("--") if "--" in command else len(command)
        own, forwarded = command[2:split], command[split + 1 :]
        for word in own:
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert f'"{flag}"' in source, f"{page.name}: {command[1]} has no {flag}"
        if forwarded:
            try:
                train().parse_args(forwarded)
            except SystemExit:
                pytest.fail(f"{page.name}: mfql-train does not take {' '.join(forwarded)}")


CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_server_option_is_in_the_configuration_table():
    table = CONFIGURATION.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name in ServerSettings.model_fields:
        assert f"`MFQL_{name.upper()}`" in table, (
            f"MFQL_{name.upper()} missing from docs/configuration.md's configuration table"
        )
        assert f"`--{name.replace('_', '-')}`" in table


def test_every_metric_is_listed():
    source = (ROOT / "server" / "metrics.py").read_text()
    names = set(re.findall(r'"(mfql_[a-z_]+)"', source))
    assert names
    section = CONFIGURATION.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for name in names:
        assert name in section, f"metric {name} is not in docs/configuration.md's metrics list"


def test_the_readme_links_the_full_configuration():
    assert "docs/configuration.md" in README


def test_no_placeholders_are_left():
    assert "{{" not in README and "TODO" not in README


def makefile_recipe(target: str) -> list[list[str]]:
    """The commands of a Makefile target, with its variables set to their defaults."""
    text = (ROOT / "Makefile").read_text()
    body = re.search(rf"^{target}:.*?\n((?:\t.*\n)+)", text, flags=re.MULTILINE).group(1)
    body = body.replace("\\\n", " ").replace("$(BIN)/", "")
    body = body.replace("$(DATA_DIR)", "data").replace("$(DEFAULT_RUN)", "runs/default-cube-single")
    body = body.replace("$(PUZZLE_RUN)", "runs/puzzle-3x3-task1")
    commands = []
    for line in body.splitlines():
        line = line.strip().split("|| ", 1)[-1]  # 'test -f FILE || CMD' runs CMD
        words = shlex.split(line)
        commands.append(words[: words.index(">")] if ">" in words else words)
    return commands


# Each embedded model: its Makefile target, and the words that open its paragraph in README's Results.
EMBEDDED_MODELS = {
    "cube-single": ("default-model", "**The embedded default model**"),
    "puzzle-3x3-task1": ("puzzle-model", "**The embedded MFQL puzzle model**"),
}


def test_every_embedded_model_has_a_recipe():
    shipped = sorted(path.parent.parent.name for path in EMBEDDED_REPOSITORY.glob("*/*/metadata.json"))
    assert shipped == sorted(EMBEDDED_MODELS)


@pytest.mark.parametrize("name", sorted(EMBEDDED_MODELS))
def test_embedded_model_commands_match_the_makefile_and_the_shipped_metadata(name):
    import json

    target, opening = EMBEDDED_MODELS[name]
    page = DEFAULT_MODEL_PAGE.read_text()
    documented = shell_commands(page)
    recipe = makefile_recipe(target)
    assert recipe and all(command in documented for command in recipe), (recipe, documented)
    (train,) = [c for c in recipe if c[0] == "mfql-train"]
    (export,) = [c for c in recipe if c[0] == "mfql-export"]
    assert export[export.index("--name") + 1] == name
    assert export[export.index("--out") + 1] == f"server/default_model/{name}/1"
    parsed = parsers()["mfql-train"]().parse_args(train[1:])
    metadata = json.loads((EMBEDDED_REPOSITORY / name / "1" / "metadata.json").read_text())
    config = metadata["training_config"]
    assert (config["agent"], config["offline_steps"], config["seed"]) == (
        parsed.agent,
        parsed.steps,
        parsed.seed,
    )
    assert config["env_name"] == parsed.env and metadata["agent"] == parsed.agent
    assert config["threads"] == parsed.threads  # the thread count changes float rounding
    assert config.get("precision", "fp32") == parsed.precision  # so does bf16 (runs before it were fp32)
    if parsed.alpha is not None:
        assert config["agent_config"]["alpha"] == parsed.alpha
    if parsed.actor_lr_schedule is not None:
        assert config["agent_config"]["actor_lr_schedule"] == parsed.actor_lr_schedule
    recorded = f"{metadata['evaluation']['success_rate']:.2f}"
    results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
    paragraph = results[results.index(opening) :].split("\n\n", 1)[0]
    assert f"make {target}" in paragraph and DEFAULT_MODEL_PAGE.name in paragraph
    assert f"server/default_model/{name}/1/" in paragraph
    assert recorded in paragraph, f"README's Results do not state the recorded {recorded}"
    assert recorded in page, f"{DEFAULT_MODEL_PAGE.name} does not state the recorded {recorded}"


def test_every_image_the_readme_shows_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images
    for image in images:
        assert (ROOT / image).is_file(), image
