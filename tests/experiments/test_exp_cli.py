"""The table of commands: every entry builds its parser and has help; groups list their members."""

from __future__ import annotations

import pytest

from experiments.cli import COMMANDS, GROUPS, Command, build_parser, main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_and_parses(name, capsys):
    cls = COMMANDS[name]
    assert issubclass(cls, Command) and cls.help.strip()
    assert len(name.split()) == 1 or name.split()[0] in GROUPS
    with pytest.raises(SystemExit) as e:
        main([*name.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: temponas {name}")
    if cls.description:
        assert " ".join(cls.description.split()[:6]) in " ".join(out.split())


def test_groups_list_their_commands(capsys):
    for group in GROUPS:
        with pytest.raises(SystemExit):
            main([group, "--help"])
        out = capsys.readouterr().out
        for name in COMMANDS:
            if name.startswith(group + " "):
                assert name.split()[1] in out


def test_missing_subcommand_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["latency"])
    assert e.value.code == 2 and "SUBCOMMAND" in capsys.readouterr().err
