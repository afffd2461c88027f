"""The documentation runs as written.

Every ``aligned-rl`` command line in a fenced ```bash block of README.md and docs/*.md (and
every inline one of three words or more) is checked without running the long job: its
arguments parse, and the config it names loads with the library's own loaders (training,
measure and tax configs, the constitution built against its family).  Every config file,
benchmark module, example and relative link the pages name exists; the README's Python
excerpt is made of the shipped example's lines; a YAML excerpt is made of a shipped config's
lines.  The examples run at their smallest settings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Command lines this test cannot check, each with the reason.  Keep it short: a command
# missing from here must be checkable, so a new broken command fails the test.
UNCHECKED: dict[str, str] = {}
# Command lines the pages show being refused, with what the refusal must name.
REFUSED = {"aligned-rl train --config configs/cartpole.yaml ppo.memory_size=64": "ppo.memory_size=64 has no effect"}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
KEYWORDS = ("do", "then", "else")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def fenced(kind: str) -> list[tuple[Path, str]]:
    """(page, text) of every fenced block of ``kind`` (bash, python, yaml) in the pages."""
    return [(page, m.group(2)) for page in PAGES for m in FENCE.finditer(page.read_text())
            if m.group(1) == kind]


# ------------------------------------------------------------------------------ shell lines
def segments(line: str) -> list[str]:
    """A shell line split at ``;``, ``&&``, ``||``, ``|`` and ``&`` outside quotes and ``$(...)``,
    without its comment."""
    parts, current, quote, depth, i = [], "", None, 0, 0
    while i < len(line):
        c = line[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif line.startswith("$(", i):
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and c == "#" and (i == 0 or line[i - 1].isspace()):
            break
        elif not depth and c in ";&|":
            parts.append(current)
            current = ""
            while i < len(line) and line[i] in ";&|":
                i += 1
            continue
        current += c
        i += 1
    return [p.strip() for p in [*parts, current] if p.strip()]


def expand(text: str, values: dict[str, str]) -> str:
    """``$X``, ``${X}`` and ``$(basename $X)`` with the given values."""
    text = re.sub(r"\$\(basename \$\{?(\w+)\}?\)",
                  lambda m: os.path.basename(values.get(m.group(1), m.group(0)).rstrip("/")), text)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def shell_commands(block: str) -> list[tuple[str, list[str]]]:
    """(segment as written, argv) of every simple command of a bash block, loops unrolled: a
    command inside ``for X in a b c`` is yielded once per value of X (and of every enclosing loop)."""
    variables: dict[str, list[str]] = {}
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        for segment in segments(line):
            words = segment.split()
            if words[0] in KEYWORDS:
                words = words[1:]
            if not words or words[0] in ("done", "fi", "wait"):
                continue
            if words[0] == "for" and len(words) >= 3 and words[2] == "in":
                variables[words[1]] = [expand(w, {k: v[0] for k, v in variables.items()}) for w in words[3:]]
                continue
            if words[0] == "export":
                words = words[1:]
            if all(ASSIGNMENT.match(w) for w in words):
                for w in words:
                    name, value = w.split("=", 1)
                    variables[name] = [value]
                continue
            text = " ".join(words)
            used = [v for v in variables if re.search(r"\$\{?" + v + r"\b", text)]
            for combination in itertools.product(*(variables[v] for v in used)):
                argv = shlex.split(expand(text, dict(zip(used, combination))))
                while argv and ASSIGNMENT.match(argv[0]):  # environment variables for the command
                    argv = argv[1:]
                if argv and argv[0] in ("time", "/usr/bin/time"):
                    argv = argv[1:]
                    while argv and argv[0].startswith("-"):
                        argv = argv[1:]
                found.append((segment, argv))
    return found


def inline_commands(page: Path) -> list[tuple[str, list[str]]]:
    """Inline code spans that are ``aligned-rl`` command lines of three words or more."""
    text = FENCE.sub("", page.read_text())
    found = []
    for span in re.findall(r"`([^`\n]+)`", text):
        if "aligned-rl " not in span:
            continue
        for segment, argv in shell_commands(span):
            if argv[:1] == ["aligned-rl"] and len(argv) >= 3:
                found.append((segment, argv))
    return found


def all_commands() -> list[tuple[str, str, list[str]]]:
    found = [(_rel(page), segment, argv) for page, block in fenced("bash") for segment, argv in shell_commands(block)]
    found += [(_rel(page), segment, argv) for page in PAGES for segment, argv in inline_commands(page)]
    return found


ALIGNED_RL = [(where, seg, argv) for where, seg, argv in all_commands() if argv[:1] == ["aligned-rl"]]


def test_the_pages_hold_commands():
    """The parser finds what the pages show (a regression here would check nothing)."""
    subcommands = {argv[1] for _, _, argv in ALIGNED_RL if len(argv) > 1}
    assert {"train", "eval", "measure", "tax", "compare", "config", "envs"} <= subcommands
    assert len(ALIGNED_RL) >= 40


# ------------------------------------------------------------------------------ aligned-rl lines
def _run_main(args: list[str]) -> str:
    from aligned_rl.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as exit_:
            code = exit_.code
    assert code == 0, f"`aligned-rl {' '.join(args)}` exited with {code}"
    return out.getvalue()


def _check_constitution(env: str, name: str) -> None:
    import aligned_rl.envs as envs

    envs.constitution(env, name)  # KeyError: no such environment or constitution


def check_aligned_rl(args: list[str]) -> None:
    """``aligned-rl ARGS`` is valid as written (nothing is trained or measured)."""
    from aligned_rl.cli import _parser

    for token in args:
        for path in re.findall(r"configs/[\w./-]+", token):
            assert (REPO / path).is_file(), f"{path} does not exist"
    if not args or "--help" in args or "-h" in args or args[0] in ("config", "envs"):
        _run_main(args)
        return
    try:
        ns = _parser().parse_args(args)
    except SystemExit as exit_:
        raise AssertionError(f"argparse refuses `aligned-rl {' '.join(args)}`") from exit_
    if ns.command == "train":
        from aligned_rl.train.config import check_constitution, load_config
        from aligned_rl.train.loop import build_constitution

        if ns.resume:  # the run directory is a placeholder; the overrides must still be keys
            load_config(None, ns.overrides)
            return
        config = load_config(ns.config, ns.overrides)
        check_constitution(config, build_constitution(config))
    elif ns.command == "measure":
        import aligned_rl.envs as envs
        from aligned_rl.baselines import BASELINES
        from aligned_rl.train.measure_config import load_measure_config

        from aligned_rl.train.measure_families import is_mixture, plan

        config = load_measure_config(ns.config, ns.overrides)
        if is_mixture(config.env):  # every family's own config, its constitution built
            for family, _, family_config in plan(config):
                _check_constitution(family, family_config.constitution)
            return
        _check_constitution(config.env, config.constitution)
        if config.agent in BASELINES and BASELINES[config.agent].reads_observations:
            assert isinstance(envs.spec(config.env).make(), envs.IndexedObservations), \
                f"the baseline {config.agent} cannot run in {config.env}"
        if config.sampling == "simple":
            assert config.num_envs % config.buckets == 0, "num_envs does not split into buckets"
    elif ns.command == "tax":
        from aligned_rl.train.alignment_tax import load_tax_config

        measure = load_tax_config(ns.config, ns.overrides).measure
        _check_constitution(measure.env, measure.constitution)
        assert measure.num_envs % measure.buckets == 0, "measure.num_envs does not split into measure.buckets"
    elif ns.command == "aiq":
        from aligned_rl.train.aiq_table import load_aiq_config

        load_aiq_config(ns.config, ns.overrides)
    elif ns.command == "frontier":  # every method's training config loads and its constitution builds
        from aligned_rl.train.frontier import load_frontier_config

        load_frontier_config(ns.config, ns.overrides)
    elif ns.command == "curriculum":  # every method's training config loads, its curriculum fits the family
        from aligned_rl.train.curriculum_compare import load_curriculum_config

        load_curriculum_config(ns.config, ns.overrides)
    elif ns.command == "evolve":  # the ancestor's training config loads, the budget fits a generation
        from aligned_rl.improve.evolve_config import load_evolve_config

        load_evolve_config(ns.config, ns.overrides)
    elif ns.command == "improve":
        from aligned_rl.improve.config import load_improve_config

        load_improve_config(ns.config, ns.overrides)
    # eval, compare, rollback: parsing is all that can be checked without a run


@pytest.mark.parametrize("where,segment,argv", ALIGNED_RL, ids=[f"{w}: {s}"[:100] for w, s, _ in ALIGNED_RL])
def test_aligned_rl_command_is_valid(where, segment, argv, monkeypatch):
    if segment in UNCHECKED:
        pytest.skip(UNCHECKED[segment])
    monkeypatch.chdir(REPO)
    if segment in REFUSED:
        from aligned_rl.train.config import ConfigError

        with pytest.raises(ConfigError, match=re.escape(REFUSED[segment])):
            check_aligned_rl(argv[1:])
        return
    check_aligned_rl(argv[1:])


def test_old_entry_points_are_gone():
    for page in PAGES:
        text = page.read_text()
        assert "python -m aligned_rl.train" not in text, f"{_rel(page)}: use `aligned-rl train`"
        assert not re.search(r"python3? bench/", text), f"{_rel(page)}: benchmarks run as `python -m bench.<name>`"


def test_python_commands_name_existing_modules_and_scripts():
    checked = 0
    for where, segment, argv in all_commands():
        if argv[:1] not in (["python"], ["python3"]) or len(argv) < 2:
            continue
        if argv[1] == "-m":
            module = argv[2]
            if module.startswith("bench."):
                assert (REPO / "bench" / f"{module.split('.', 1)[1]}.py").is_file(), f"{where}: {segment}"
            else:
                spec = importlib.util.find_spec(module)
                assert spec is not None, f"{where}: no module {module}"
                if spec.submodule_search_locations is not None:  # a package runs its __main__
                    assert importlib.util.find_spec(module + ".__main__") is not None, f"{where}: {segment}"
            checked += 1
        elif argv[1].endswith(".py"):
            assert (REPO / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
            checked += 1
    assert checked >= 5


def test_every_bench_module_named_exists():
    for page in PAGES:
        for name in re.findall(r"python -m bench\.(\w+)", page.read_text()):
            assert (REPO / "bench" / f"{name}.py").is_file(), f"{_rel(page)}: bench/{name}.py does not exist"


# ------------------------------------------------------------------------------ files and links
def test_relative_links_point_to_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{_rel(page)}: the link {target} points to nothing"


def test_named_repository_files_exist():
    pattern = r"(?<![\w/.])((?:configs|examples|bench|docs|train|envs|aligned_rl|cli|tests)/[\w./-]*\.(?:py|yaml|md|json|png|txt))"
    for page in PAGES:
        for path in re.findall(pattern, page.read_text()):
            assert (REPO / path).is_file(), f"{_rel(page)} names {path}, which does not exist"


def test_readme_excerpt_is_the_example():
    example = {line.strip() for line in (REPO / "examples" / "train_and_measure.py").read_text().splitlines()}
    blocks = [text for page, text in fenced("python") if page.name == "README.md"]
    assert blocks, "the README shows no Python"
    for block in blocks:
        for line in block.splitlines():
            assert not line.strip() or line.strip() in example, f"not in examples/train_and_measure.py: {line}"


def test_yaml_excerpts_are_shipped_configs():
    configs = {p: {line.rstrip() for line in p.read_text().splitlines()} for p in (REPO / "configs").glob("*.yaml")}
    for page, block in fenced("yaml"):
        lines = {line.rstrip() for line in block.splitlines() if line.strip()}
        assert any(lines <= shipped for shipped in configs.values()), f"{_rel(page)}: a YAML block no config holds"


# ------------------------------------------------------------------------------ the examples
# script: (smallest arguments, text its output must hold, whether it runs in its own process:
# one that registers a family would leave it in the registry of the test session)
EXAMPLES = {
    "train_and_measure.py": (["--timesteps", "1024", "--train-envs", "8", "--num-envs", "16", "--episode-length", "20",
                              "--buckets", "1", "--run-dir", "{tmp}/run"],
                             ["Upsilon (reward per step)", "forbidden-action rate", "Upsilon, PPO minus Q(lambda), paired:"],
                             True),
    "new_family.py": (["--timesteps", "1024", "--num-envs", "8", "--episode-length", "10", "--run-dir", "{tmp}/run"],
                      ["PPO: 1,024 steps", "q_lambda", "random"], True),
    "custom_agent.py": (["--num-envs", "8", "--episode-length", "10"], ["lawful random", "AIQ random"], False),
    "write_a_constitution.py": ([], ["Judgement("], False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path, monkeypatch, capsys):
    args, expected, own_process = EXAMPLES[name]
    args = [a.format(tmp=tmp_path) for a in args]
    if own_process:
        result = subprocess.run([sys.executable, f"examples/{name}", *args], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout
    else:
        monkeypatch.chdir(REPO)
        monkeypatch.setattr(sys, "argv", [f"examples/{name}", *args])
        runpy.run_path(str(REPO / "examples" / name), run_name="__main__")
        output = capsys.readouterr().out
    for text in expected:
        assert text in output, output
    if name == "custom_agent.py":  # the lawful agent never breaks the rule
        lawful = next(line for line in output.splitlines() if line.startswith("lawful random"))
        assert "forbidden rate 0.0000 [0.0000, 0.0000]" in lawful


def test_examples_are_documented():
    pages = "".join(page.read_text() for page in PAGES)
    for script in sorted((REPO / "examples").glob("*.py")):
        assert f"examples/{script.name}" in pages, f"no page shows examples/{script.name}"
        assert script.name in EXAMPLES, f"test_example_runs does not run examples/{script.name}"
