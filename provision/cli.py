"""The ``provision`` command line. Parsing and printing only: the work is in commands.

Exit codes: 0 success, 1 a stage, check or host operation failed, 2 bad input
(nothing was touched).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from provision import __version__
from provision.errors import EXIT_BAD_INPUT, EXIT_FAILED, ProvisionError

app = typer.Typer(
    name="provision",
    help="Turn one inventory file into a verified, highly available Kubernetes cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
if TYPE_CHECKING:
    from provision.commands import RunSummary

P = ParamSpec("P")
T = TypeVar("T")
# Never re-wrapped (soft_wrap): off a terminal, rich wraps at 80 columns, and scripts
# read one problem per line. No emoji codes either: messages quote the user's text.
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out = Console(highlight=False)


class Output(StrEnum):
    text = "text"
    json = "json"


Inventory = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory file (YAML).", envvar="PROVISION_INVENTORY"),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json (for scripts).")]
Nodes = Annotated[
    str | None, typer.Option("--nodes", help="Comma-separated node names to limit the run to.")
]


def _nodes(value: str | None) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()] if value else []


def _emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call an operation; turn provision's errors into a message and an exit code."""
    try:
        return fn(*args, **kwargs)
    except ProvisionError as exc:
        _report(exc)
        raise typer.Exit(exc.exit_code) from None
    except FileNotFoundError as exc:
        _report(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _report(exc: Exception) -> None:
    """An error for the operator. An invalid inventory is its problems, one per line as
    `validate` prints them; any other message may quote an inventory or a path, so it is
    never read as markup and its control characters are escaped (lines stay lines)."""
    from provision.inventory import InventoryInvalid
    from provision.inventory.problems import printable

    if isinstance(exc, InventoryInvalid):
        err.print(str(exc), markup=False)
        return
    text = "\n".join(printable(line) for line in str(exc).split("\n"))
    err.print(Text.assemble(("error:", "red"), " ", text))


@app.command()
def validate(inventory: Inventory, output: OutputOpt = Output.text) -> None:
    """Check an inventory and report every problem with file, line and field; touches nothing."""
    from provision import commands
    from provision.inventory import InventoryInvalid

    try:
        inv = commands.validate(inventory)
    except InventoryInvalid as exc:
        if output is Output.json:
            _emit_json({"valid": False, "problems": [p.to_dict() for p in exc.problems]})
        else:
            _report(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ProvisionError as exc:
        _report(exc)
        raise typer.Exit(exc.exit_code) from None
    warnings = [p.to_dict() for p in getattr(inv, "warnings", [])]
    if output is Output.json:
        _emit_json({"valid": True, "cluster": inv.name, "warnings": warnings,
                    "nodes": [{"name": n.name, "roles": sorted(n.roles), "provider": n.provider,
                               "address": str(n.address)} for n in inv.nodes]})
        return
    for w in getattr(inv, "warnings", []):
        err.print(str(w), markup=False)
    out.print(f"{inventory}: valid: cluster {inv.name!r}, {len(inv.nodes)} nodes")


@app.command()
def schema() -> None:
    """Print the inventory's JSON Schema (point your editor at it)."""
    from provision.inventory import inventory_json_schema

    _emit_json(inventory_json_schema())


Force = Annotated[bool, typer.Option(
    "--force", help="Accept a plan refused only for safety margins: an even etcd end "
    "state, a single etcd member, replacing a broken (not gone) machine.")]


@app.command()
def plan(inventory: Inventory, force: Force = False, output: OutputOpt = Output.text) -> None:
    """Show what `up` would do now: membership changes in order, then stages to converge.

    Exit 0 when `up` would proceed, 2 when it would refuse the change.
    """
    from provision import commands

    report = _run(commands.plan, inventory, force=force)
    if output is Output.json:
        _emit_json(report.to_json())
    else:
        out.print(report.membership.to_table(), markup=False, highlight=False, soft_wrap=True)
        table = Table("step", "node", "action", "reason", title="steps `up` runs")
        for planned in report.steps:
            for change in planned.changes:
                table.add_row(planned.step.name, change.node, change.action, change.reason)
        if table.row_count:
            out.print(table)
        else:
            out.print("every step: nothing to do (`provision verify` re-checks the nodes)")
    if not report.ok:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def up(
    inventory: Inventory,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
    only: Annotated[str | None, typer.Option(help="Run only this stage.")] = None,
    nodes: Nodes = None,
    force: Force = False,
    force_drain: Annotated[bool, typer.Option(
        "--force-drain", help="Remove nodes even when a PodDisruptionBudget forbids "
        "evicting their pods (the pods are deleted).")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Create or converge the cluster to the inventory: add, join, remove, replace.

    A full run plans membership changes first (as `provision plan` shows) and refuses
    unsafe ones before touching anything; --until/--only/--nodes only converge stages.
    """
    from provision import commands

    summary = _run(commands.up, inventory, until=until, only=only, nodes=_nodes(nodes),
                   force=force, force_drain=force_drain)
    _finish(summary, output)


@app.command()
def verify(
    inventory: Inventory,
    only: Annotated[str | None, typer.Option(help="Check only this stage.")] = None,
    nodes: Nodes = None,
    output: OutputOpt = Output.text,
) -> None:
    """Re-run every stage's checks against the live cluster; change nothing."""
    from provision import commands

    summary = _run(commands.verify, inventory, only=only, nodes=_nodes(nodes))
    _finish(summary, output)


def _finish(summary: RunSummary, output: Output) -> None:
    if output is Output.json:
        _emit_json(summary.to_json())
    else:
        colour = "green" if summary.status == "ok" else "red"
        out.print(f"[{colour}]{summary.command} {summary.status}[/{colour}] "
                  f"in {summary.duration:.1f}s; report: {summary.report_html}")
        if summary.error:
            err.print(summary.error, markup=False)
    if summary.status != "ok":
        raise typer.Exit(EXIT_FAILED)


@app.command()
def status(inventory: Inventory, output: OutputOpt = Output.text) -> None:
    """Show the cluster's machines and the outcome of the last run."""
    from provision import commands

    status = _run(commands.status, inventory)
    if output is Output.json:
        _emit_json(status.to_json())
        return
    table = Table("node", "roles", "provider", "address", "machine", title=status.cluster)
    for n in status.nodes:
        table.add_row(n.name, ",".join(n.roles), n.provider, n.address, n.machine)
    out.print(table)
    if status.running:
        r = status.running
        out.print(f"being changed now: provision {r.command}, pid {r.pid} on {r.host}, "
                  f"started {r.started}", markup=False)
    last = status.last_run
    if last:
        out.print(f"last run: {last.command} {last.status} ({last.run}); report: {last.report}")
    else:
        out.print("no run recorded yet")


@app.command()
def destroy(
    inventory: Inventory,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    keep_machines: Annotated[bool, typer.Option(
        "--keep-machines", help="Keep the machines: reset every node to a clean OS "
        "(Kubernetes, etcd, their data and services removed; SSH access kept).")] = False,
    wipe: Annotated[bool, typer.Option(
        "--wipe", help="Also erase bare-metal machines' disks (partition table and "
        "filesystem signatures) before powering them off. Without it they are powered "
        "off and forgotten (reinstalled by the next up), their disks left as they are.")
    ] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Remove the cluster's machines, networks and local state (run records stay).

    Run records keep their backups (etcd snapshots) after the cluster is gone.
    """
    from provision import commands
    from provision.inventory import load_inventory

    if keep_machines and wipe:
        err.print("error: --wipe erases the machines --keep-machines keeps; use one of them")
        raise typer.Exit(EXIT_BAD_INPUT)
    name = _run(load_inventory, inventory).name
    if not yes:
        if not sys.stdin.isatty():
            err.print("error: refusing to destroy without --yes when not on a terminal")
            raise typer.Exit(EXIT_BAD_INPUT)
        what = ("reset every node of" if keep_machines else "destroy")
        typer.confirm(f"{what.capitalize()} cluster {name!r}"
                      + ("" if keep_machines else " and all its machines") + "?", abort=True)
    if keep_machines:
        reset = _run(commands.reset, inventory)
        data, text = reset.to_json(), (f"reset cluster {reset.cluster}: "
                                       f"{', '.join(reset.reset)} (machines kept)")
    else:
        gone = _run(commands.destroy, inventory, wipe)
        data, text = gone.to_json(), (f"destroyed cluster {gone.cluster}: "
                                      f"{', '.join(gone.destroyed)}")
    if output is Output.json:
        _emit_json(data)
    else:
        out.print(text)


@app.command()
def backup(inventory: Inventory, output: OutputOpt = Output.text) -> None:
    """Take an etcd snapshot, check it, and store it (0600) in a new run record."""
    from provision import commands

    snap = _run(commands.backup, inventory)
    if output is Output.json:
        _emit_json(snap.to_json())
        return
    out.print(f"snapshot {snap.snapshot} from {snap.member}: revision {snap.revision}, "
              f"hash {snap.hash}, {snap.keys} keys, {snap.size} bytes, sha256 {snap.sha256}")
    out.print(f"restore it with: provision restore -i {inventory} {snap.snapshot}")


@app.command()
def restore(
    inventory: Inventory,
    snapshot: Annotated[Path, typer.Argument(help="An etcd snapshot from `provision backup`.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Rebuild etcd from a snapshot, bring the control plane back, run every check.

    Every change made after the snapshot is lost.
    """
    from provision import commands

    if not yes:
        if not sys.stdin.isatty():
            err.print("error: refusing to restore without --yes when not on a terminal")
            raise typer.Exit(EXIT_BAD_INPUT)
        typer.confirm(f"Replace the cluster's etcd data with {snapshot}?", abort=True)
    summary = _run(commands.restore, inventory, snapshot)
    _finish(summary, output)


@app.command()
def kubeconfig(
    inventory: Inventory,
    path: Annotated[Path | None, typer.Option("--path", help="Where to write it.")] = None,
    output: OutputOpt = Output.text,
) -> None:
    """Write an admin kubeconfig (mode 0600) that reaches the API from this box."""
    from provision import commands

    written = _run(commands.kubeconfig, inventory, path)
    if output is Output.json:
        _emit_json(written.to_json())
        return
    out.print(f"wrote {written.kubeconfig} (API at {written.server})")
    out.print(f"next: KUBECONFIG={written.kubeconfig} kubectl get nodes")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    ctx: typer.Context,
    inventory: Inventory,
    node: Annotated[str, typer.Argument(help="Node name.")],
) -> None:
    """Open a shell (or run a command) on a node with the cluster's SSH settings."""
    from provision import commands

    argv = _run(commands.ssh_argv, inventory, node, list(ctx.args))
    os.execvp(argv[0], argv)


artifacts_app = typer.Typer(help="The artifact set the mirror serves: build it, see what is "
                            "cached.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")

VersionOpt = Annotated[
    str | None,
    typer.Option("--version", help="Kubernetes version (default: the inventory's, else newest)."),
]
OptionalInventory = Annotated[
    Path | None,
    typer.Option("-i", "--inventory", help="Take the Kubernetes version and the artifact "
                 "source (artifacts.source) from this inventory; else offline.",
                 envvar="PROVISION_INVENTORY"),
]


def _artifact_target(inventory: Path | None, version: str | None) -> tuple[str | None, str]:
    """(Kubernetes version, artifact source) of the inventory; --version wins."""
    if inventory is None:
        return version, "offline"
    from provision.inventory import load_inventory

    inv = _run(load_inventory, inventory)
    return version or str(inv.kubernetes.version), inv.artifacts.source


@artifacts_app.command("build")
def artifacts_build(
    inventory: OptionalInventory = None,
    version: VersionOpt = None,
    update_lock: Annotated[bool, typer.Option(
        "--update-lock", help="Accept new checksums into the lock file.")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """Build or fetch every artifact for a Kubernetes version (cached)."""
    import time

    from provision.artifacts import build

    started = time.monotonic()
    ver, source = _artifact_target(inventory, version)
    aset = _run(build, ver, progress=lambda m: err.print(m, markup=False), source=source,
                update_lock=update_lock)
    seconds = round(time.monotonic() - started, 1)
    if output is Output.json:
        _emit_json({"kubernetes": aset.kubernetes, "artifacts": len(aset.artifacts),
                    "images": sorted(aset.images), "seconds": seconds})
    else:
        out.print(f"artifacts for {aset.kubernetes}: {len(aset.artifacts)} ready "
                  f"({len(aset.images)} images) in {seconds}s")


@artifacts_app.command("status")
def artifacts_status(
    inventory: OptionalInventory = None,
    version: VersionOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Show every pinned artifact: present or missing, version, source, sha256."""
    from provision.artifacts import status as artifact_status

    ver, source = _artifact_target(inventory, version)
    rows = _run(artifact_status, ver, source=source)
    if output is Output.json:
        _emit_json([r.__dict__ for r in rows])
    else:
        table = Table("state", "kind", "name", "version", "source", "sha256")
        for r in rows:
            table.add_row("present" if r.present else "[red]MISSING[/red]", r.kind, r.name,
                          r.version, r.source, r.sha256[:12])
        out.print(table)
    if not all(r.present for r in rows):
        raise typer.Exit(EXIT_FAILED)


def _version(value: bool) -> None:
    if value:
        out.print(f"provision {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Turn one inventory file into a verified, highly available Kubernetes cluster."""


def _terminated(_signum: int, _frame: object) -> None:
    # A cancelled CI job or `kill` ends a run the way Ctrl-C does: waits stop, the run
    # record is finished, and the next `up` resumes from what the machines say.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    app()


if __name__ == "__main__":
    main()
