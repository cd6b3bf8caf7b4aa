"""
The command registry, the exit statuses and the error lines, without a
guest: every entry point takes its commands from vmemspect.commands and its
exit statuses from vmemspect.errors.
"""

import re

import drgn
import pytest
from click.testing import CliRunner

from vmemspect import cli, errors
from vmemspect.commands import COMMANDS, command_names
from vmemspect.errors import MissingMemory, VmemspectError, error_line, exit_status

from synthetic import build_kernel


def test_every_command_is_on_the_command_line_and_in_help():
    assert command_names()[0] == "report"
    for group in (cli.live, cli.vmcore):
        assert set(group.commands) == set(command_names())
    out = CliRunner().invoke(cli.main, ["--help"]).output
    for c in COMMANDS:
        if c.name != "report":  # "none: the full report"
            assert f"{c.name:<8} {c.summary}" in out


def test_percent_vmemspect_runs_every_command(capsys):
    prog = build_kernel().prog
    for name in command_names():
        assert cli.run([name, "--help"], prog=prog) == 0
        assert f"%vmemspect {name}" in capsys.readouterr().out


def test_every_reading_command_replays():
    """extract replays each command that reads (all but extract itself)."""
    assert [c.name for c in COMMANDS if c.replay is None] == ["extract"]


def test_missing_memory_is_a_drgn_fault():
    e = MissingMemory("a page table", 0x1234000)
    assert isinstance(e, drgn.FaultError) and e.address == 0x1234000
    assert str(e) == "a page table at 0x1234000 is not in the dump"
    with pytest.raises(drgn.FaultError):
        raise e


@pytest.mark.parametrize("exc, status, reason", [
    (VmemspectError("x"), 2, "unusable_input"),
    (MissingMemory("a page table", 0x1000), 2, "missing_memory"),
    (drgn.FaultError("could not find memory segment", 0x1000), 2, "missing_memory"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (ValueError("x"), 3, "internal_error"),
])
def test_exit_status(exc, status, reason):
    assert exit_status(exc) == (status, reason)


def test_exit_statuses_are_documented_in_help():
    out = CliRunner().invoke(cli.main, ["--help"]).output
    assert (f"{errors.EXIT_OK} ok, {errors.EXIT_FINDINGS} verify found violations, "
            f"{errors.EXIT_UNUSABLE} unusable input, {errors.EXIT_INTERNAL} internal error") in out


def test_a_fault_says_what_and_where():
    dump = error_line(MissingMemory("a page table", 0x1000))
    assert "lacks a page table at 0x1000" in dump and "dump" in dump
    live = error_line(drgn.FaultError("could not read memory", 0xffff888000001000), live=True)
    assert "0xffff888000001000" in live and "running kernel" in live
    assert "truncated" not in live


def test_a_fault_in_a_command_is_one_line_with_the_address(capsys):
    """A fault no command can do without (here the hstate array itself)
    ends the run with status 2 and one line naming the address."""
    k = build_kernel()
    hstates = k.prog["hstates"].address_

    def gone(address, count, offset, physical):
        raise drgn.FaultError("gone", address)

    # Shadow the hstates' virtual range with a segment that faults.
    k.prog.add_memory_segment(hstates, 4096, gone, physical=False)
    assert cli.run(["verify"], prog=k.prog) == errors.EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vmemspect: error:" in err
    assert "hstates" in err
    addresses = [int(a, 16) for a in re.findall(r"0x[0-9a-f]+", err)]
    assert any(hstates <= a < hstates + 4096 for a in addresses), err
