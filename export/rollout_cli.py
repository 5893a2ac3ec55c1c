"""`starfish rollout status`: per-device model-update state as the broker holds it (`export.rollout`).

(`starfish release BUNDLE` is one command, so the rollout's read side lives here; staged waves are
`starfish release BUNDLE --canary DEV,... --broker HOST:PORT`.)
"""

from __future__ import annotations

import json

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.command()
def status(
    broker: str = typer.Option(..., "--broker", help="host:port of the MQTT broker the devices report to."),
    prefix: str = typer.Option("starfish", "--prefix", help="MQTT topic prefix."),
    wait: float = typer.Option(1.0, "--wait", min=0.0, max=600.0, help="Seconds to listen after the retained ones."),
    device: list[str] = typer.Option(None, "--device", help="Only these device ids (default: every device)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (every report as received) instead of a table."),
) -> None:
    """Show each device's running model, current update state, progress, error and last update event."""
    from rich.console import Console
    from rich.table import Table

    from export.rollout import fleet_status, parse_broker, status_rows

    host, port = parse_broker(broker)
    devices = fleet_status(host, port, prefix=prefix, wait_s=wait, devices=device or None)
    if as_json:
        typer.echo(json.dumps({d: row.as_dict() for d, row in devices.items()}, indent=2, sort_keys=True))
        return
    rows = status_rows(devices)
    if not rows:
        typer.echo(f"no device reports under {prefix}/+/model/update, …/model, …/status on {broker}")
        return
    table = Table("device", "status", "running", "update", "version", "progress", "error", "last event")
    for row in rows:
        table.add_row(*row.values())
    Console(width=160).print(table)
