"""Every flag declared once (fsd/tuning/command/options.py): the parser, the parsed record, the bounds the checks
hold and SearchSpec's defaults follow the declarations, and every flag the command names is declared."""

import ast
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from fsd.tuning.command.flags import CONFLICTS, OWNED, REPORT_FLAGS, UsageError
from fsd.tuning.command.options import DECLARED, FLAGS, Options, Parser, flag_name, given
from fsd.tuning.plan.spec import SearchSpec

ROOT = Path(__file__).resolve().parents[3]
NOT_OURS = {"--help", "--head", "--port"}  # argparse's own; `ray start --head --port` in a hint


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
