"""`nas device serve`: run the measurement agent on a target device (see `predictors.latency.remote`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nas.commands.common import fail_on_user_error
from predictors.latency.builder import LocalMeasurer
from predictors.latency.measure import LATENCY_BACKENDS
from predictors.latency.agent import serve
from predictors.latency.protocol import DEFAULT_HOST, DEFAULT_PORT, AgentLimits
from search_spaces.errors import OptionError

device_app = typer.Typer(no_args_is_help=True, help="Run on a target device: measure ops for a remote LUT build.")


@device_app.command("serve")
@fail_on_user_error
def serve_command(
    host: str = typer.Option(
        DEFAULT_HOST, help="Address to bind. Anything but loopback exposes the agent to the network "
        "(plain HTTP, the token is its only protection): prefer an SSH tunnel."),
    port: int = typer.Option(DEFAULT_PORT, min=0, max=65535, help="Port to listen on (0: any free port)."),
    token: str | None = typer.Option(
        None, envvar="NAS_DEVICE_TOKEN",
        help="Bearer token clients must send. Default: a random one, printed once. The environment "
        "variable keeps it out of the process list."),
    backend: str = typer.Option("onnxruntime", help="Latency backend: onnxruntime, torch or cuda."),
    threads: int = typer.Option(1, min=1, help="Threads the backend may use (recorded in the table)."),
    max_body: int = typer.Option(AgentLimits().max_body_bytes, min=1024, help="Largest request body in bytes."),
    cert: Optional[Path] = typer.Option(None, help="PEM certificate (chain): serve HTTPS only. Clients trust it "
                                        "through the system or NAS_DEVICE_CA=FILE."),
    key: Optional[Path] = typer.Option(None, help="PEM private key of --cert (if not inside it)."),
) -> None:
    """Serve /v1/info and /v1/measure/{layers,archs} until Ctrl-C."""
    if backend not in LATENCY_BACKENDS:
        names = ", ".join(LATENCY_BACKENDS.names())
        raise typer.BadParameter(f"{backend!r} not in {{{names}}}", param_hint="--backend")
    measurer = LocalMeasurer(backend, threads=threads)  # DeviceError: cuda without a GPU
    try:
        if key is not None and cert is None:
            raise OptionError("--key needs --cert (the certificate it belongs to)")
        server = serve(host, port, token, measurer, max_body=max_body, background=False,  # OptionError: bad token/cert
                       certfile=cert, keyfile=key)
    except OSError as error:  # address in use, not this machine's, unknown host name
        raise OptionError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None
    typer.echo(f"device agent listening on {server.url} (backend {backend}, {threads} thread(s)); Ctrl-C stops it")
    if host in ("0.0.0.0", "::"):
        typer.echo(f"(all interfaces: clients use this device's address with port {server.port})")
    if server.token_generated:
        typer.echo(f"token (generated, shown once): {server.token}")
    typer.echo(f"on the workstation: nas lut build --device {server.url} --token <token> ...")
    server.serve_forever()
    typer.echo("device agent stopped")


def register(app: typer.Typer) -> None:
    app.add_typer(device_app, name="device")
