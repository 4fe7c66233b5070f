"""Every flag declared once (fsd/tuning/command/options.py): the parser and the parsed record follow the
declarations."""

from dataclasses import MISSING

import pytest

from fsd.tuning.command.options import FLAGS, Options, Parser, given


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
