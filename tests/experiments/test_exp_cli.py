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


@pytest.mark.parametrize("argv", [
    ["latency", "probes", "no_such_preset_or_file"],
    ["latency", "measure", "no_such_preset_or_file", "--out", "x.csv"],
    ["proxies", "audit", "no_such_preset_or_file", "--out", "x"],
])
def test_config_or_preset_that_names_nothing_is_one_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no_such_preset_or_file: neither a preset (tiny, ") and err.count("\n") == 1


def test_config_or_preset_reads_a_space_only_yaml_and_task_flags(tmp_path, capsys):
    import json

    space = tmp_path / "space.yaml"
    space.write_text("space:\n  defaults: {kinds: [none, conv1d], kernel_t: [3]}\n")
    assert main(["latency", "probes", str(space), "--preset", "tiny", "--frames", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and {r["frames"] for r in rows} == {2}
    assert {r["kind"] for r in rows} <= {"", "none", "conv1d"}
    space.write_text("- not a mapping\n")
    assert main(["latency", "probes", str(space)]) == 2
    assert capsys.readouterr().err == f"error: {space}: expected a mapping at the top level\n"
