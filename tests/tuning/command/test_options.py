"""Every flag declared once (fsd/tuning/command/options.py): the parser, the parsed record, the bounds the checks
hold, docs/search.md's table and SearchSpec's defaults all follow the declarations; a planted mismatch is found."""

import ast
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from fsd.tuning.command import options
from fsd.tuning.command.flags import CONFLICTS, OWNED, REPORT_FLAGS, UsageError
from fsd.tuning.command.options import DECLARED, FLAGS, Options, Parser, flag_name, given
from fsd.tuning.plan.spec import SearchSpec

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "search.md"
HEAD = "| flag | default | what |"
NOT_OURS = {"--help", "--head", "--port"}  # argparse's own; `ray start --head --port` in a hint


def page_table(text: str) -> str:
    """The table of every flag as a page writes it: from its head to the first blank line."""
    start = text.index(HEAD)
    end = text.find("\n\n", start)
    return text[start:] if end < 0 else text[start:end]


def table_mismatches(text: str) -> list[str]:
    """The rows where the page's table and the one the declarations make differ: `-` the page's, `+` the made."""
    written, made = page_table(text).splitlines(), options.table().splitlines()
    return [f"- {row}" for row in written if row not in made] + [f"+ {row}" for row in made if row not in written] \
        + ([] if [r for r in written if r in made] == [r for r in made if r in written] else ["order"])


def test_the_search_pages_table_is_the_one_the_declarations_make():
    assert table_mismatches(PAGE.read_text()) == [], \
        "docs/search.md's table of every flag: paste python -c 'from fsd.tuning.command.options import table; " \
        "print(table())'"


@pytest.mark.parametrize("plant", [
    lambda t: t.replace("| `--max-concurrent` | as resources allow |", "| `--max-concurrent` | 4 |"),
    lambda t: t.replace("| `--seeds` | 1 |", "| `--seed` | 1 |"),
    lambda t: t.replace("| `--compile` | off | `torch.compile` the students (CUDA) |\n", ""),
    lambda t: t.replace(HEAD + "\n|---|---|---|\n", HEAD + "\n|---|---|---|\n| `--workers` | 2 | processes |\n"),
    lambda t: t.replace("| `--seed` | 42 | the first seed |\n", "").replace(
        "| `--seeds` | 1 |", "| `--seed` | 42 | the first seed |\n| `--seeds` | 1 |"),
])
def test_a_planted_mismatch_between_the_page_and_the_declarations_is_found(plant):
    text = PAGE.read_text()
    planted = plant(text)
    assert planted != text
    assert table_mismatches(planted)


def test_a_declaration_that_changed_is_found(monkeypatch):
    """The other way round: the page stays, a declaration changes (its default, as the table says it)."""
    changed = options.flag(3, least=0, help="h", doc=FLAGS["--max-failures"].metadata["doc"])
    changed.name = "max_failures"
    monkeypatch.setattr(options, "DECLARED", tuple(changed if f.name == "max_failures" else f for f in DECLARED))
    assert table_mismatches(PAGE.read_text()) == [
        "- | `--max-failures` | 1 | retries of a crashed trial from its last checkpoint |",
        "+ | `--max-failures` | 3 | retries of a crashed trial from its last checkpoint |"]


def test_every_choice_is_named_in_its_row():
    for f in DECLARED:
        for choice in f.metadata["choices"] or ():
            assert choice in f.metadata["doc"], (flag_name(f), choice)


def test_the_parser_is_the_declarations():
    parser = Parser("python tune_main.py")
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings[0] != "-h"}
    assert list(actions) == list(FLAGS)
    for name, f in FLAGS.items():
        action = actions[name]
        assert action.dest == f.name and action.help == f.metadata["help"]
        assert action.required == (f.default is MISSING)
        assert action.choices == (list(f.metadata["choices"]) if f.metadata["choices"] else None)
    assert [[a.dest for a in g._group_actions] for g in parser._mutually_exclusive_groups] == [["verbose", "quiet"]]


def test_a_command_line_parses_into_the_record():
    args = Parser("python tune_main.py").parse_args(["--task", "rte", "--set", "lr=3e-5", "--set", "alpha=0.5",
                                                     "--max-concurrent", "2", "--teacher-lr", "1e-4", "--compile"])
    assert isinstance(args, Options)
    assert args.sets == ("lr=3e-5", "alpha=0.5") and args.grids == () and args.max_concurrent == 2
    assert args.teacher_lr == 1e-4 and args.compile and args.strategy == "grid" and args.confirm_top is None
    assert given(args) == ["--task", "--max-concurrent", "--teacher-lr", "--set", "--compile"]


@pytest.mark.parametrize("argv", [["--task", "rte", "--quiet", "--verbose"], ["--task", "rte", "--strategy", "x"],
                                  ["--max-concurrent", "2"]])
def test_what_argparse_refuses_is_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        Parser("fsd-tune").parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and err.endswith(" (fsd-tune --help lists the flags)\n")


def test_each_declared_least_value_is_checked():
    from fsd.tuning.command.checks import check_search_numbers

    bounded = [f for f in DECLARED if f.metadata["least"] is not None]
    assert {flag_name(f) for f in bounded} >= {"--seeds", "--max-concurrent", "--num-samples", "--confirm-top"}
    for f in bounded:
        value = f.metadata["least"] - 1
        args = Options(task="rte", strategy="optuna", **{f.name: value})
        with pytest.raises(UsageError, match=f"^{flag_name(f)} {value}: use {f.metadata['least']} or more$"):
            check_search_numbers(args)


def test_search_spec_defaults_are_the_flags():
    """A flag passed to SearchSpec as given has the default SearchSpec has (tests and benches build specs without
    the command line)."""
    spec = {f.name: f.default for f in fields(SearchSpec)}
    shared = [f for f in DECLARED
              if f.name in spec and f.default not in (MISSING, None) and spec[f.name] is not MISSING]
    assert {f.name for f in shared} >= {"max_concurrent", "seeds", "strategy", "select_on", "log_checkpoints"}
    assert [(f.name, f.default) for f in shared] == [(f.name, spec[f.name]) for f in shared]


def _spelled_flags(source: str) -> set[str]:
    """The --flags that the string constants of a module spell (not anchors such as #--budget-...)."""
    words = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words |= set(re.findall(r"(?<![\w#-])--[a-z][a-z-]*[a-z]", node.value))
    return words


def test_every_flag_the_command_names_is_declared():
    """A message, conflict or hint that names a renamed or mistyped flag is found."""
    named = set(REPORT_FLAGS) | {f for firsts, second, _ in CONFLICTS for f in (*firsts, second)}
    named |= {w for v in OWNED.values() for w in v.split() if w.startswith("--")}
    for path in [*sorted((ROOT / "fsd" / "tuning" / "command").glob("*.py")), ROOT / "tune_main.py"]:
        named |= _spelled_flags(path.read_text())
    assert sorted(named - set(FLAGS) - NOT_OURS) == []
    assert _spelled_flags('m = "--max-concurent 2 (see #--budget-what)"') == {"--max-concurent"}
