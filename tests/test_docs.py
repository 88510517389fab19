"""The README and the pages in docs/ stay true: the front page is short and links to pages that exist, every
``nested-ac`` command and flag they mention exists (read from ``--help``), the cheap commands run, every
config key, env id, file and benchmark flag they name exists, and the layout lists the tree.

The plug-in example of docs/environments.md runs verbatim in tests/test_packaging.py; ``mkdocs build
--strict`` (broken links and anchors, pages missing from the navigation, API pages) runs in scripts/test.sh.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from nested_ac.config import RunConfig
from nested_ac.sweep import load_experiment
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *PAGES]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
SUBCOMMANDS = ("train", "sweep", "report", "list")


def _prose(text: str) -> str:
    """The text without its fenced blocks."""
    return FENCE.sub("", text)


def _spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks, a span broken over lines joined by one space."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", _prose(text))]


def _command_lines(text: str) -> list[str]:
    """Every ``nested-ac SUBCOMMAND ...`` the text shows: a line of a code block (continuations joined, the
    comment dropped) or an inline code span, from ``nested-ac`` on."""
    joined = text.replace("\\\n", " ")
    candidates = [line.split(" # ")[0] for line in joined.splitlines()] + _spans(text)
    pattern = re.compile(rf"(?<![\w/.-])nested-ac\s+(?:{'|'.join(SUBCOMMANDS)})\b[^`]*")
    return [match.group(0).strip() for line in candidates if (match := pattern.search(line))]


def _all_commands() -> list[tuple[str, str]]:
    return [(page.name, line) for page in DOCS for line in _command_lines(page.read_text())]


def _help(cli, *args: str) -> str:
    code, out, _ = cli(*args, "--help")
    assert code == 0
    return out


@pytest.fixture
def options(cli) -> dict[str, set[str]]:
    """Each subcommand's option strings, as its ``--help`` prints them."""
    top = _help(cli)
    assert set(re.search(r"\{([\w,]+)\}", top).group(1).split(",")) == set(SUBCOMMANDS)
    return {name: set(re.findall(r"(?<![\w-])--[a-z][\w-]*", _help(cli, name))) for name in SUBCOMMANDS}


def _names(cli, topic: str) -> set[str]:
    """The first column of ``nested-ac list TOPIC``."""
    code, out, _ = cli("list", topic)
    assert code == 0
    return {line.split()[0] for line in out.splitlines() if line[:1].islower()}  # not the closing hint


# -- the front page ---------------------------------------------------------------------------------------


def test_readme_is_a_short_front_page():
    text = README.read_text()
    assert len(text) < 12_000, f"README.md has {len(text)} characters; the reference belongs in docs/"
    first_block = FENCE.search(text).group(2).splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
    ]
    assert "not met" in text and "](docs/collapse-suite-profiles.png)" in text  # the suite's profiles


def test_the_demo_ends_where_a_task_does_after_whole_rollouts():
    """The demo (scripts/demo.sh: the shipped experiment ``demo``) trains at least 10 tasks, and its last
    rollout ends on a task boundary: it trains no steps of a task it does not finish; README and the
    getting-started page name its tasks as they are."""
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert "nested-ac sweep demo --workers 2" in script
    experiment = load_experiment("demo")
    names = [spec.variant for spec in experiment.runs]
    assert names == ["ppo-adam", "ppo-cbp", "ppo-shrink-perturb"]
    config = experiment.runs[0].config
    steps, every = config.steps, config.env.schedule.every
    rollout = config.ppo.n_steps * config.env.n_envs
    assert every and steps % every == 0 and every % rollout == 0 and steps // every >= 10, (steps, every)
    tasks = f"{steps // every} tasks of {every:,} steps"
    assert tasks in README.read_text() and tasks in (ROOT / "docs" / "index.md").read_text()


def _heading_anchors(page: Path) -> set[str]:
    """The ids MkDocs gives the page's headings (toc's default slugify)."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", _prose(page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        anchors.add(re.sub(r"[-\s]+", "-", slug))
    return anchors


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    assert len([link for link in links if link.startswith("docs/") and link.endswith(".md")]) >= len(PAGES)
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), f"README.md links to {path}, which does not exist"
        if anchor:
            assert anchor in _heading_anchors(ROOT / path), f"README.md links to a missing anchor: {link}"
    # Every page but the API page is one link away from the front page.
    assert {page.name for page in PAGES} - {Path(link.partition("#")[0]).name for link in links} <= {"api.md"}


# -- commands and flags ------------------------------------------------------------------------------------


def test_every_documented_subcommand_and_flag_exists(cli, options):
    commands = _all_commands()
    assert len(commands) > 30
    topics = re.search(r"\{([\w,]+)\}", _help(cli, "list")).group(1).split(",")
    for page, line in commands:
        tokens = line.split()
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line):
            assert flag in options[tokens[1]], f"{page}: {line!r}: nested-ac {tokens[1]} has no {flag}"
        if tokens[1] == "list" and len(tokens) > 2:
            assert tokens[2] in topics, f"{page}: {line!r}: no such list topic"
    every_option = set().union(*options.values())
    for page in DOCS:
        for span in _spans(page.read_text()):
            if re.match(r"--[a-z]", span):
                flag = span.split()[0].split("=")[0]
                assert flag in every_option, f"{page.name}: `{span}` is no nested-ac option"


def test_documented_names_exist(cli):
    """Every --agent, --optimizer and --preset value, shipped experiment and env id the pages name."""
    choices = {
        flag: _names(cli, topic)
        for flag, topic in (("--agent", "agents"), ("--optimizer", "optimizers"), ("--preset", "presets"))
    }
    experiments = _names(cli, "experiments")
    envs = _names(cli, "envs")
    for page in DOCS:
        text = page.read_text()
        for line in _command_lines(text) + _spans(text):
            for flag, valid in choices.items():
                for value in re.findall(rf"{flag}[ =]([a-z][\w-]*)\b", line):
                    assert value in valid, f"{page.name}: {line!r}: {flag} {value} is not one of {valid}"
            sweep = re.match(r"nested-ac sweep ([\w-]+)(\s|$)", line)
            if sweep and not sweep.group(1).isupper():
                assert sweep.group(1) in experiments, f"{page.name}: {line!r}: no shipped experiment"
        for env_id in re.findall(r"(?<![\w.:])nested_ac/[A-Z]\w*-v\d+", text):
            assert env_id in envs, f"{page.name}: {env_id} is not a registered env"
    table = (ROOT / "docs" / "environments.md").read_text()
    assert {env_id for env_id in envs if f"`{env_id}`" not in table} == set(), "an env missing from the table"


def _config_keys() -> set[str]:
    def flatten(mapping: dict, prefix: str = "") -> set[str]:
        keys = set()
        for key, value in mapping.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                keys |= flatten(value, f"{prefix}{key}.")
        return keys

    return flatten(RunConfig().to_dict())


FILE_NAME = re.compile(r"\.(png|py|yaml|md|json|pt|zip)$")  # `diagnostics.png` is a file, not a key


def test_every_documented_config_key_exists():
    keys = _config_keys()
    sections = {key for key in keys if "." not in key and f"{key}." in " ".join(keys)}
    pattern = re.compile(rf"^(?:{'|'.join(sorted(sections))})\.[a-z_0-9.]*[a-z_0-9](?=$|=)")
    seen = set()
    for page in DOCS:
        text = page.read_text()
        candidates = _spans(text) + [
            assignment for line in _command_lines(text) for assignment in re.findall(r"--set (\S+)", line)
        ]
        for candidate in candidates:
            if (match := pattern.match(candidate)) and not FILE_NAME.search(candidate):
                assert match.group(0) in keys, f"{page.name}: `{candidate}` names no config key"
                seen.add(match.group(0))
    assert len(seen) > 45  # the tables of every tool's keys were read


# -- commands that run --------------------------------------------------------------------------------------

SMALL_BUDGET = 1024
SCALED_KEYS = ("env.schedule.every", "nested.freeze_outer_after", "checkpoint.every")


def _runnable_train_commands() -> list[list[str]]:
    """The documented ``nested-ac train`` commands that need nothing from an earlier run or a user's
    folder (the plug-in pages' commands run with their files in tests/test_packaging.py,
    tests/test_tools.py and tests/test_nsgym.py)."""
    commands = []
    for _, line in _all_commands():
        args = shlex.split(line)[1:]
        user_module = "mypkg" in line or "nsworld" in line or "plugins=" in line
        runnable = len(args) > 1 and not {"--resume", "--config"} & set(args) and not user_module
        if args[0] == "train" and runnable and args not in commands:  # not a bare mention of the subcommand
            commands.append(args)
    return commands


def _scaled(args: list[str]) -> list[str]:
    """``args`` with the step budget cut to SMALL_BUDGET and the step counts in ``--set`` cut by as much."""
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else RunConfig().steps
    scaled = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in SCALED_KEYS and value.isdigit():
            arg = f"{key}={max(1, int(value) * SMALL_BUDGET // steps)}"
        scaled.append(arg)
    return [*scaled, "--steps", str(SMALL_BUDGET)]


def test_documented_list_and_train_commands_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lists = {
        tuple(shlex.split(line)[1:3])
        for _, line in _all_commands()
        if re.fullmatch(r"nested-ac list \w+", line)
    }
    assert len(lists) == 6  # envs, agents, optimizers, tools, presets, experiments
    for args in sorted(lists):
        code, out, err = cli(*args)
        assert code == 0 and out.strip(), (args, err)
    trains = _runnable_train_commands()
    assert len(trains) >= 4
    for args in trains:
        code, out, err = cli(*_scaled(args), "--run-dir", "runs", *FAST)
        assert code == 0, (args, err)
    finished = list((tmp_path / "runs").glob("*/model.zip"))
    assert len(finished) == len(trains)
    code, out, err = cli("report", "runs", "--reps", "100")
    assert code == 0, err
    assert (tmp_path / "runs" / "report" / "report.md").is_file()


def test_documented_experiment_files_load(tmp_path):
    """The sweep pages' YAML examples and every file or shipped experiment a ``nested-ac sweep`` names."""
    files = []
    for page in DOCS:
        for language, block in FENCE.findall(page.read_text()):
            if language == "yaml" and "variants:" in block and not block.startswith("# windy.yaml"):
                files.append(tmp_path / f"{len(files)}.yaml")
                files[-1].write_text(block)
    assert files
    named = {line.split()[2] for _, line in _all_commands() if line.startswith("nested-ac sweep ")}
    for experiment in {*files, *(name for name in named if not name.isupper() and name != "windy.yaml")}:
        path = ROOT / experiment if str(experiment).endswith(".yaml") else experiment
        assert load_experiment(path, sweep_dir=tmp_path / "sweep").runs


# -- files, scripts and benchmarks the pages name ----------------------------------------------------------


def _names_a_path(token: str) -> bool:
    """A repository path, not an env id like ``nested_ac/PermutedCartPole-v0``."""
    pattern = r"(?:nested_ac|envs|agents|bench|tests|scripts|examples|docs|\.ci)/[\w./-]*[\w/]"
    return bool(re.fullmatch(pattern, token)) and (
        not token.startswith("nested_ac/") or token.endswith((".py", ".yaml", "/"))
    )


def test_every_named_file_exists():
    named = 0
    for page in DOCS:
        text = page.read_text()
        for token in " ".join(_spans(text) + re.findall(r"bash (scripts/[\w.-]+)", text)).split():
            if _names_a_path(token):
                named += 1
                assert (ROOT / token).exists(), f"{page.name} names {token}, which does not exist"
    assert named > 30


def test_benchmark_commands_name_existing_scripts_and_flags():
    commands = re.findall(
        r"\.venv/bin/python (bench/\S+\.py)([^`]*)`", (ROOT / "docs" / "benchmarks.md").read_text()
    )
    scripts = {script for script, _ in commands}
    assert scripts == {f"bench/{path.name}" for path in (ROOT / "bench").glob("*.py")}, (
        "a benchmark without a row"
    )
    for script, flags in commands:
        source = (ROOT / script).read_text()
        for module in re.findall(r"^from (\w+) import", source, re.MULTILINE):  # a shared bench helper
            if (ROOT / "bench" / f"{module}.py").is_file():
                source += (ROOT / "bench" / f"{module}.py").read_text()
        for flag in re.findall(r"--[a-z][\w-]*", flags):
            assert f'"{flag}"' in source, f"{script} has no {flag}"


# -- the layout lists the tree -----------------------------------------------------------------------------


def _tracked() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


def _layout(page: Path) -> list[str]:
    """The paths of the page's ``## Layout`` block: an entry per line, indented 4 (top) or 6 (inside)."""
    section = page.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    entries, parent = [], ""
    for line in section.splitlines():
        if match := re.match(r"^    (  )?(\S+)( |$)", line):
            if match.group(1):
                entries.append(parent + match.group(2))
            else:
                parent = match.group(2)
                entries.append(parent)
    return entries


def test_layout_sections_list_the_tree():
    tracked = _tracked()
    top = {path.split("/")[0] + ("/" if "/" in path else "") for path in tracked}
    readme = set(_layout(README))
    architecture = set(_layout(ROOT / "docs" / "architecture.md"))
    for listed in (readme, architecture):
        assert all((ROOT / entry).exists() for entry in listed), sorted(
            e for e in listed if not (ROOT / e).exists()
        )
    assert top - readme <= {"README.md", ".gitignore"}, sorted(top - readme)
    assert top - architecture <= {".gitignore"}, sorted(top - architecture)
    inside = set()
    for path in tracked:
        parts = path.split("/")
        if parts[0] in ("nested_ac", "envs", "agents", "bench") and len(parts) > 1:
            entry = f"{parts[0]}/{parts[1]}" + ("/" if len(parts) > 2 else "")
            if not (parts[0] == "bench" and len(parts) == 2):  # bench/*.py: test_benchmark_commands_...
                inside.add(entry)
    assert inside - architecture == set(), (
        f"docs/architecture.md's layout misses {sorted(inside - architecture)}"
    )


# -- what a newcomer reads first ----------------------------------------------------------------------------


def test_the_config_key_page_is_generated_from_the_code_and_current():
    from nested_ac import config_keys
    from nested_ac.config import plugin_sections

    assert (ROOT / "docs" / "config-keys.md").read_text() == config_keys.page(), (
        "docs/config-keys.md is stale: .venv/bin/python -m nested_ac.config_keys > docs/config-keys.md"
    )
    built_in = {key for key in _config_keys() if key.split(".")[0] not in plugin_sections()}
    leaves = {key for key in built_in if not any(other.startswith(key + ".") for other in built_in)}
    assert {key.name for key in config_keys.keys()} == leaves
    assert all(key.meaning for key in config_keys.keys())  # every key says what it means


def _flag_table(page: Path) -> set[str]:
    """The flags in the first column of the page's flag table."""
    return {
        flag
        for line in page.read_text().splitlines()
        if line.startswith("| `--")
        for flag in re.findall(r"`(--[a-z][\w-]*)", line.split("|")[1])
    }


def test_every_train_flag_is_in_the_flag_table(options):
    assert options["train"] - {"--help"} == _flag_table(ROOT / "docs" / "cli-and-config.md")


def test_each_commands_help_points_to_a_page_of_the_docs(cli):
    for command in SUBCOMMANDS:
        text = " ".join(_help(cli, command).split())
        pages = re.findall(r"docs/[\w-]+\.md", text)  # whole: a path is not broken at its hyphens
        assert pages and all((ROOT / page).is_file() for page in pages), (command, text)
        assert "README" not in text


def test_list_shows_each_description_whole_and_its_wall_time_agrees_with_the_readme(cli):
    from nested_ac.experiments import EXPERIMENTS
    from nested_ac.presets import PRESETS

    for topic, shipped in (("experiments", EXPERIMENTS), ("presets", PRESETS)):
        code, out, _ = cli("list", topic)
        assert code == 0
        for name in shipped.names():
            lines = shipped.path(name).read_text().splitlines()
            comments = itertools.takewhile(lambda line: line.startswith("#") and line.strip("# "), lines)
            paragraph = " ".join(line.lstrip("#").strip() for line in comments)
            (row,) = [line for line in out.splitlines() if line.startswith(name + " ")]
            assert row.split(None, 1)[1] == paragraph, name
    readme = README.read_text()
    for name, minutes in re.findall(r"nested-ac sweep ([\w-]+) --workers 2\s+# (\d+) min", readme):
        assert f"{minutes} min" in EXPERIMENTS.description(name), name


def test_the_docs_index_shows_a_figure():
    index = (ROOT / "docs" / "index.md").read_text()
    figures = re.findall(r"!\[[^\]]+\]\(([\w.-]+\.png)\)", index)
    assert figures and all((ROOT / "docs" / figure).is_file() for figure in figures)
