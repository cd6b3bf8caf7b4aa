"""
Command line
------------

``vmemspect TARGET [COMMAND] [OPTIONS]``: a target (``live`` or ``vmcore
DUMP``), then one command (none means the full report). The same commands
serve drgn's ``%vmemspect`` (:mod:`vmemspect.plugin`). This module only
parses arguments, calls the layers below and prints; exit statuses and
error lines are those of :mod:`vmemspect.errors`.
"""

import os
import sys
import traceback
from typing import Any, Callable, Dict, Optional

import click
import drgn

from . import __version__
from .errors import (
    EXIT_FINDINGS,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNUSABLE,
    MissingMemory,
    VmemspectError,
    error_line,
    exit_status,
)
from .extract import extract, extract_doc, render_extract
from .hugetlb import for_each_hstate_record
from .hvo import decode_page
from .kernel import kernel_model
from .fastscan import DEFAULT_SAMPLE
from .metrics import write_metrics
from .progcache import is_live
from .commands import COMMANDS, command_names
from .documents import (
    aliased_rows,
    decode_doc,
    folio_rows,
    folios_doc,
    report_doc,
    savings_doc,
    tails_doc,
    verify_doc,
    write_json,
)
from .tables import (
    render_decode,
    render_folios,
    render_report,
    render_savings,
    render_tails,
    render_verify,
)
from .parallel import default_jobs
from .report import Report, RowSink, build_report, folio_filter, parse_page_ref
from .target import find_vmcoreinfo, open_live, open_vmcore
from .vmcoreinfo import parse_vmcoreinfo

_EPILOG = """\b
Commands after the target (none: the full report):
""" + "".join(f"  {c.name:<8} {c.summary}\n" for c in COMMANDS if c.name != "report") + """\b
Examples:
  vmemspect vmcore /var/crash/dump.img -s vmlinux
  vmemspect vmcore dump.img verify --json
  sudo vmemspect live folios --hstate 1G
  vmemspect live decode pfn:0x100000
  vmemspect vmcore /var/crash/dump.img extract hvo.kdump
  vmemspect live metrics --textfile /var/lib/prometheus/node-exporter/vmemspect.prom
\b
Exit status: 0 ok, 1 verify found violations, 2 unusable input, 3 internal error.
"""


class _Context:
    """What the target group hands its commands: a way to open the program
    (opened on first use, so --help opens nothing) and output options."""

    def __init__(self, opener: Callable[[], drgn.Program], as_json: bool, fmt: str,
                 progress: bool) -> None:
        self._opener = opener
        self._prog: Optional[drgn.Program] = None
        self.as_json = as_json
        self.fmt = fmt
        self.progress = progress
        #: Processes that read the folios (--jobs); None: every usable CPU.
        self.jobs: Optional[int] = None

    @property
    def prog(self) -> drgn.Program:
        if self._prog is None:
            self._prog = self._opener()
        return self._prog

    def report(self, rows: Optional[RowSink] = None, memmap: bool = False) -> Report:
        """The scan, keeping no folio record (rows, if asked, go to disk);
        ``memmap``: the whole-memmap read too."""
        prog = self.prog
        model = kernel_model(prog)
        jobs = default_jobs() if self.jobs is None else self.jobs
        if not (self.progress and sys.stderr.isatty()) or not model.hugetlb:
            report = build_report(prog, keep_folios=False, rows=rows, jobs=jobs, memmap=memmap)
        else:
            total = sum(h.nr_huge_pages for h in for_each_hstate_record(prog))
            with click.progressbar(length=total, label="scanning folios",
                                   file=sys.stderr) as bar:
                report = build_report(prog, progress=lambda _, n: bar.update(n),
                                      keep_folios=False, rows=rows, jobs=jobs, memmap=memmap)
        w = report.workers
        if w is not None and w.failed:
            click.echo(f"vmemspect: --jobs {w.requested}: the workers failed ({w.failed}); "
                       "the scan read every folio in this process instead (the same "
                       "answer, more time)", err=True)
        return report

    def aliased(self) -> Optional[RowSink]:
        """The pointer form's aliased frames are listed per folio (tails)."""
        return aliased_rows() if kernel_model(self.prog).form == "pointer" else None

    def emit(self, doc: Dict[str, Any], table: Callable[[Dict[str, Any], str], Any]) -> None:
        """JSON or the table, written as made (lists streamed from disk)."""
        if self.as_json:
            write_json(doc, sys.stdout.write)
            return
        out = table(doc, self.fmt)
        if isinstance(out, str):
            click.echo(out)
        else:
            for line in out:
                sys.stdout.write(line + "\n")


def _output_options(f: Callable) -> Callable:
    f = click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")(f)
    f = click.option("--format", "fmt", default=None, metavar="STYLE",
                     help="Table style of tabulate (plain, simple, github, grid...).")(f)
    f = click.option("--json", "as_json", is_flag=True, default=None,
                     help="JSON on stdout (schema in docs/json.md).")(f)
    return f


def _jobs_option(f: Callable) -> Callable:
    return click.option(
        "--jobs", "-j", type=click.IntRange(min=1), default=None, metavar="N",
        help="Processes that read the folios at once, on a dump (default: every usable "
             "CPU; 1: one process). Same output whatever N; a live kernel is read by "
             "one.")(f)


def _ctx(as_json: Optional[bool], fmt: Optional[str], no_progress: bool,
         jobs: Optional[int] = None) -> _Context:
    """The parent's context with this command's output options applied."""
    c: _Context = click.get_current_context().find_object(_Context)
    if jobs is not None:
        c.jobs = jobs
    if as_json:
        c.as_json = True
    if fmt:
        c.fmt = fmt
    if no_progress:
        c.progress = False
    return c


@click.command("report")
@_output_options
@_jobs_option
def report_cmd(as_json, fmt, no_progress, jobs) -> None:
    """The full report (the default command)."""
    c = _ctx(as_json, fmt, no_progress, jobs)
    c.emit(report_doc(c.report(c.aliased())), render_report)


@click.command("folios")
@click.option("--hstate", help="Only this hstate: 2M, 1G, 2048kB or hugepages-2048kB.")
@click.option("--node", "nid", type=int, help="Only folios on this node.")
@click.option("--state", type=click.Choice(["free", "in-use"]), help="Only free or in-use folios.")
@click.option("--optimized/--not-optimized", default=None, help="Only folios with/without HVO.")
@_output_options
@_jobs_option
def folios_cmd(hstate, nid, state, optimized, as_json, fmt, no_progress, jobs) -> None:
    """A row per hugetlb folio, with its vmemmap frames and verdict."""
    c = _ctx(as_json, fmt, no_progress, jobs)
    model = kernel_model(c.prog)
    report = c.report(folio_rows(folio_filter(model, None, hstate, nid, state, optimized)))
    folio_filter(model, report.hstates, hstate)  # an hstate this kernel lacks: say so
    c.emit(folios_doc(report), render_folios)


@click.command("tails")
@_output_options
@_jobs_option
def tails_cmd(as_json, fmt, no_progress, jobs) -> None:
    """Shared tail frames per node, zone and order (mask form), or each
    folio's aliased frame and fake heads (pointer form)."""
    c = _ctx(as_json, fmt, no_progress, jobs)
    c.emit(tails_doc(c.report(c.aliased())), render_tails)


@click.command("decode")
@click.argument("page")
@_output_options
def decode_cmd(page, as_json, fmt, no_progress) -> None:
    """Decode the compound_info/compound_head of PAGE (an address or pfn:N)."""
    c = _ctx(as_json, fmt, no_progress)
    model = kernel_model(c.prog)
    address = parse_page_ref(model, page)
    try:
        decoded = decode_page(c.prog, address)
    except MissingMemory as e:
        raise VmemspectError(str(e), "give a struct page that the dump holds")
    c.emit(decode_doc(decoded), render_decode)


@click.command("verify")
@click.option("--all", "show_all", is_flag=True,
              help="List every finding (default: grouped by check, the first few of each).")
@click.option("--memmap", is_flag=True,
              help="Also read every struct page of the memmap for a hugetlb page type outside "
              "the listed folios (stale types, unlisted unremapped folios); one read per "
              "vmemmap page outside them (docs/checks.md).")
@_output_options
@_jobs_option
def verify_cmd(show_all, memmap, as_json, fmt, no_progress, jobs) -> None:
    """Check every HVO invariant; exit 1 if any does not hold."""
    c = _ctx(as_json, fmt, no_progress, jobs)
    report = c.report(memmap=memmap)
    c.emit(verify_doc(report), lambda doc, f: render_verify(doc, f, show_all))
    if report.findings:
        sys.exit(EXIT_FINDINGS)


@click.command("extract")
@click.argument("out", type=click.Path())
@_output_options
def extract_cmd(out, as_json, fmt, no_progress) -> None:
    """Write OUT: a small kdump-compressed vmcore holding only what vmemspect
    reads (page tables, the folios' vmemmap, kernel data, BTF and kallsyms),
    to attach to a bug report (docs/extract.md)."""
    c = _ctx(as_json, fmt, no_progress)
    say = None
    if c.progress and sys.stderr.isatty():
        say = lambda what: click.echo(f"extract: {what}...", err=True)  # noqa: E731
    c.emit(extract_doc(extract(c.prog, out, progress=say)), render_extract)


@click.command("savings")
@_output_options
@_jobs_option
def savings_cmd(as_json, fmt, no_progress, jobs) -> None:
    """Vmemmap HVO saves, measured and by the kernel's counters, and what
    each scheme (none, two pages, pointer form, mask form) would take for
    the folios HVO can optimize."""
    c = _ctx(as_json, fmt, no_progress, jobs)
    c.emit(savings_doc(c.report()), render_savings)


@click.command("metrics")
@click.option("--textfile", metavar="PATH", type=click.Path(dir_okay=False),
              help="Write to PATH atomically (temporary file, then rename) for "
                   "node_exporter's textfile collector, instead of stdout. A failed "
                   "run writes its failure there too.")
@click.option("--fast", is_flag=True,
              help="Counters, the vmemmap's read-only PTEs and a sample of folios instead "
                   "of every folio (docs/monitoring.md says what it leaves out).")
@click.option("--sample", type=click.IntRange(min=0), default=DEFAULT_SAMPLE, show_default=True,
              help="With --fast: folios checked in full per hstate.")
def metrics_cmd(textfile, fast, sample) -> None:
    """Prometheus metrics of one scan (text exposition format); exit 1 if
    the scan found violations, as verify."""
    c: _Context = click.get_current_context().find_object(_Context)
    if write_metrics(lambda: c.prog, textfile, sys.stdout.buffer, fast, sample):
        sys.exit(EXIT_FINDINGS)


#: The click command of each command of :data:`vmemspect.commands.COMMANDS`.
def _click_commands() -> tuple:
    by_name = {c.name: c for c in (report_cmd, folios_cmd, tails_cmd, decode_cmd, verify_cmd,
                                   extract_cmd, savings_cmd, metrics_cmd)}
    if set(by_name) != set(command_names()):  # a bug, seen at import
        raise RuntimeError(f"the command line's commands {sorted(by_name)} are not "
                           f"vmemspect.commands' {sorted(command_names())}")
    return tuple(by_name[name] for name in command_names())


CLICK_COMMANDS = _click_commands()


class _TargetGroup(click.Group):
    """A group whose own options may follow its positional DUMP
    (``vmcore DUMP -s VMLINUX verify``): click stops parsing a group's
    options at its first positional, so the options are moved before it."""

    def parse_args(self, ctx: click.Context, args: list) -> list:
        # Only a group with a positional (vmcore DUMP): in `live metrics
        # --textfile F` the first word is the command, whose options stay.
        if args and not args[0].startswith("-") and any(
                isinstance(p, click.Argument) for p in self.params):
            takes_value = {o for p in self.params if isinstance(p, click.Option)
                           and not p.is_flag for o in p.opts}
            first, rest = args[0], list(args[1:])
            i = 0
            while i < len(rest) and rest[i].startswith("-"):
                i += 2 if rest[i] in takes_value else 1
            args = rest[:i] + [first] + rest[i:]
        return super().parse_args(ctx, args)


def _target_group(name: str, help: str) -> Callable:
    def decorate(f: Callable) -> click.Group:
        group = click.group(name, cls=_TargetGroup, invoke_without_command=True, help=help,
                            epilog=_EPILOG)(_output_options(f))
        for cmd in CLICK_COMMANDS:
            group.add_command(cmd)
        return group
    return decorate


@click.group(epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmemspect")
def main() -> None:
    """Show and verify the kernel's HugeTLB Vmemmap Optimization (HVO)."""


def _start(ctx: click.Context, opener: Callable[[], drgn.Program], as_json, fmt,
           no_progress) -> None:
    ctx.obj = _Context(opener, bool(as_json), fmt or "simple", not no_progress)
    if ctx.invoked_subcommand is None:
        ctx.invoke(report_cmd, as_json=None, fmt=None, no_progress=False, jobs=None)


@_target_group("live", "Inspect the running kernel through /proc/kcore (as root).")
@click.option("-s", "--vmlinux", type=click.Path(), help="The kernel's DWARF vmlinux.")
@click.pass_context
def live(ctx, vmlinux, as_json, fmt, no_progress) -> None:
    _start(ctx, lambda: open_live(vmlinux), as_json, fmt, no_progress)


@_target_group("vmcore", "Inspect a kernel dump (ELF or kdump-compressed, QEMU's too).")
@click.argument("dump", type=click.Path())
@click.option("-s", "--vmlinux", type=click.Path(), help="The kernel's DWARF vmlinux.")
@click.option("--architecture", type=click.Choice(["x86_64", "riscv64"]),
              help="The dump's architecture, when the dump does not say (QEMU kdump).")
@click.option("--vmcoreinfo", "vmcoreinfo", type=click.Path(), metavar="FILE",
              help="The kernel's VMCOREINFO text, for a dump without the note "
              "(QEMU riscv64); overrides the dump's own.")
@click.pass_context
def vmcore(ctx, dump, vmlinux, architecture, vmcoreinfo, as_json, fmt, no_progress) -> None:
    _start(ctx, lambda: open_vmcore(dump, vmlinux, architecture, vmcoreinfo), as_json, fmt,
           no_progress)


@main.command("vmcoreinfo")
@click.argument("dump", type=click.Path())
@click.option("--at", "at", metavar="PADDR", help="Physical address of the note (the first "
              "number of the guest's /sys/kernel/vmcoreinfo); default: search the dump.")
def vmcoreinfo_cmd(dump, at) -> None:
    """Print the VMCOREINFO text of an ELF dump that lacks the note (QEMU
    riscv64), for --vmcoreinfo FILE."""
    try:
        address = None if at is None else int(at, 0)
    except ValueError:
        raise VmemspectError(f"--at {at}: not an address", "give it as 0x83000000")
    paddr, text = find_vmcoreinfo(dump, address)
    click.echo(text.decode("ascii", "replace"), nl=False)
    click.echo(f"vmemspect: VMCOREINFO of {parse_vmcoreinfo(text).get('OSRELEASE')} "
               f"at physical address {paddr:#x}", err=True)


main.add_command(live)
main.add_command(vmcore)


def run(args=None, prog: Optional[drgn.Program] = None) -> int:
    """
    Run the command line; return the exit status. With ``prog``, the target
    is that program and ``args`` start at the command (drgn's %vmemspect).
    """
    try:
        if prog is not None:
            group = click.Group("%vmemspect", invoke_without_command=True, epilog=_EPILOG,
                                callback=click.pass_context(
                                    lambda ctx, **kw: _start(ctx, lambda: prog, **kw)),
                                params=_output_params())
            for cmd in CLICK_COMMANDS:
                group.add_command(cmd)
            group.main(args=args, prog_name="%vmemspect", standalone_mode=False)
        else:
            main.main(args=args, prog_name="vmemspect", standalone_mode=False)
        return EXIT_OK
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_OK
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return EXIT_UNUSABLE
    except BrokenPipeError:
        return EXIT_OK
    except (Exception, KeyboardInterrupt, click.exceptions.Abort) as e:
        # Unusable input, memory every command needs (kernel data, not one
        # folio's) missing, or a bug: one line (a traceback for a bug only
        # when asked).
        status, _ = exit_status(e)
        if status == EXIT_INTERRUPTED:
            return status
        if status == EXIT_INTERNAL and os.environ.get("VMEMSPECT_DEBUG"):
            traceback.print_exc()
        live = is_live(prog) if prog is not None else \
            (sys.argv[1:] if args is None else list(args))[:1] == ["live"]
        click.echo(f"vmemspect: {error_line(e, live)}", err=True)
        return status


def _output_params():
    dummy = _output_options(lambda **kw: None)
    return list(reversed(dummy.__click_params__))


def entry_point() -> None:
    sys.exit(run())
