"""The ``athena-sandbox`` command: run code, build images, inspect policies, clean up.

It lives in ``athena`` (the composition root) because ``run`` and ``demo`` open the memory
store as well as the orchestrator.

This is an application, so unlike the library it configures logging (structlog to stderr).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import structlog
import yaml

from orchestrator.errors import RequestError, SandboxError
from orchestrator.languages import LANGUAGES
from orchestrator.policy import load_policy, shipped_policy_names
from orchestrator.settings import Settings


def _configure_logging(verbose: bool) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )


def _parse_param(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        loaded = json.loads(params_json)
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value  # not JSON: take it as a string
    return params


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """athena-sandbox: run untrusted code in throwaway containers."""
    _configure_logging(verbose)


@main.command()
@click.argument("source", type=click.File("r"), default="-")
@click.option(
    "-l",
    "--language",
    default="python",
    show_default=True,
    help=f"{', '.join(language.name for language in LANGUAGES)} (or an alias).",
)
@click.option(
    "-p", "--policy", default=None, help="Shipped policy name or YAML path [default: strict]."
)
@click.option("-t", "--timeout", type=float, default=None, help="Seconds; capped by the policy.")
@click.option(
    "--param", "params", multiple=True, help="KEY=VALUE (VALUE parsed as JSON if it can be)."
)
@click.option("--params", "params_json", default=None, help="All parameters as one JSON object.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@click.option(
    "--db", default=None, help="Memory store path (default: ATHENA_MEMORY_DB or ~/.athena)."
)
@click.option("--no-record", is_flag=True, help="Do not persist the run.")
def run(
    source: Any,
    language: str,
    policy: str | None,
    timeout: float | None,
    params: tuple[str, ...],
    params_json: str | None,
    as_json: bool,
    db: str | None,
    no_record: bool,
) -> None:
    """Run code from SOURCE (a file, or - for stdin) in a sandbox."""
    from athena.api import MemoryAPI

    code = source.read()
    try:
        with MemoryAPI.create(db) as api:
            result = api.execute_code(
                code,
                language,
                _parse_param(params, params_json),
                timeout,
                policy,
                record=not no_record,
            )
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
        for line in [*result["violations"], *(i["message"] for i in result["issues"])]:
            click.echo(f"[athena-sandbox] {line}", err=True)
        if result["error"]:
            click.echo(f"[athena-sandbox] error: {result['error']}", err=True)
    sys.exit(0 if result["success"] else (result["exit_code"] if result["exit_code"] > 0 else 1))


@main.command()
@click.argument("languages", nargs=-1)
@click.option("--force", is_flag=True, help="Rebuild even when the definitions did not change.")
def images(languages: tuple[str, ...], force: bool) -> None:
    """Build the sandbox images (all languages unless some are named)."""
    from orchestrator.images import ImageBuilder

    try:
        built = ImageBuilder(progress=lambda line: click.echo(line, err=True)).build_all(
            languages or None, force=force
        )
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    for language, reference in built.items():
        click.echo(f"{language}: {reference}")
    _prepare_fast(list(built))


def _prepare_fast(languages: list[str]) -> None:
    """Export the images' root filesystems for the fast mode now, not at its first run."""
    from orchestrator.backends.fast import FastBackend, host_reason

    reason = host_reason()
    if reason is not None:
        click.echo(f"fast mode: not prepared, it cannot run here: {reason}", err=True)
        return
    backend = FastBackend(Settings())
    try:
        for language in languages:
            click.echo(f"fast mode: {language}: {backend.prepare(language)}", err=True)
    except OSError as exc:
        raise click.ClickException(f"exporting a root filesystem for the fast mode: {exc}") from exc
    finally:
        backend.close()


@main.command("build-image")
@click.argument("name")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@click.option("--no-cache", is_flag=True, help="Build every step again.")
@click.option(
    "--pull/--no-pull",
    default=False,
    show_default=True,
    help="Pull newer base images first (needs a registry; our images are local).",
)
def build_image(name: str, directory: Path, no_cache: bool, pull: bool) -> None:
    """Build DIRECTORY/Dockerfile (FROM athena-sandbox/<language>) as the image NAME.

    Runs select it with image=NAME (a call) or image: NAME (a policy).
    """
    from orchestrator.custom_images import build_custom

    try:
        language = build_custom(
            name,
            directory,
            no_cache=no_cache,
            pull=pull,
            progress=lambda line: click.echo(line, err=True),
        )
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}: {language}")


@main.group()
def policy() -> None:
    """Inspect policies."""


@policy.command("list")
def policy_list() -> None:
    """List the shipped policies."""
    for name in shipped_policy_names():
        click.echo(f"{name}: {load_policy(name).description}")


@policy.command("show")
@click.argument("spec")
def policy_show(spec: str) -> None:
    """Print a policy (shipped name or path) with its `extends` chain merged."""
    try:
        loaded = load_policy(spec)
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False))


@policy.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def policy_check(paths: tuple[Path, ...]) -> None:
    """Check policy files; exit non-zero if any is invalid."""
    failed = False
    for path in paths:
        try:
            load_policy(path)
            click.echo(f"{path}: ok")
        except SandboxError as exc:
            click.echo(str(exc), err=True)
            failed = True
    sys.exit(1 if failed else 0)


# --------------------------------------------------------------------------- tokens

_TOKENS_FILE = click.option(
    "--file",
    "token_file",
    envvar="ATHENA_TOKENS_FILE",
    default=None,
    help="The token file [default: $ATHENA_TOKENS_FILE].",
)


def _tokens_path(token_file: str | None) -> str:
    """Return the token file's path, or a usage error saying how to name one."""
    if not token_file:
        raise click.UsageError("name the token file: --file FILE, or set ATHENA_TOKENS_FILE")
    return token_file


@main.group()
def tokens() -> None:
    """Manage the bearer tokens of `serve --tokens FILE` (each names a tenant)."""


@tokens.command("add")
@click.argument("tenant")
@_TOKENS_FILE
@click.option(
    "--policies",
    default="strict,research",
    show_default=True,
    help="Comma-separated policies the tenant may use (development mounts the project: opt-in).",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    help="How many runs the tenant may have in flight at once (more: 429).",
)
def tokens_add(tenant: str, token_file: str | None, policies: str, max_in_flight: int) -> None:
    """Create a token for TENANT; print it alone on stdout (shown only this once)."""
    from athena.service.tokens import TokenFile

    file = TokenFile(_tokens_path(token_file))
    names = [name.strip() for name in policies.split(",") if name.strip()]
    try:
        info, token = file.add(tenant, names, max_in_flight)
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"created {info.id} for tenant {info.tenant!r} (policies: {', '.join(info.policies)}; "
        f"max in flight: {info.max_in_flight}) in {file.path}. The token below is shown only "
        "now; the file keeps only its hash.",
        err=True,
    )
    click.echo(token)


@tokens.command("list")
@_TOKENS_FILE
@click.option("--json", "as_json", is_flag=True, help="Print the tokens as a JSON list.")
def tokens_list(token_file: str | None, as_json: bool) -> None:
    """List the tokens: id, tenant, policies, max in flight, created (never a token or hash)."""
    from athena.service.tokens import TokenFile

    file = TokenFile(_tokens_path(token_file))
    try:
        infos = file.list()
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([info.model_dump(mode="json") for info in infos], indent=2))
        return
    if not infos:
        click.echo(f"no tokens in {file.path}", err=True)
        return
    rows = [("ID", "TENANT", "POLICIES", "MAX IN FLIGHT", "CREATED")]
    rows += [
        (i.id, i.tenant, ",".join(i.policies), str(i.max_in_flight), i.created_at.isoformat())
        for i in infos
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@tokens.command("revoke")
@click.argument("token_id")
@_TOKENS_FILE
def tokens_revoke(token_id: str, token_file: str | None) -> None:
    """Revoke the token TOKEN_ID; servers refuse it from their next request."""
    from athena.service.tokens import TokenFile

    file = TokenFile(_tokens_path(token_file))
    try:
        revoked = file.revoke(token_id)
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc
    if not revoked:
        raise click.ClickException(
            f"no token {token_id!r} in {file.path}; see `athena-sandbox tokens list`"
        )
    click.echo(f"revoked {token_id}; servers reading {file.path} refuse it from now on", err=True)


@main.command()
def sweep() -> None:
    """Remove sandbox containers whose owner process is dead."""
    from orchestrator.backends.docker import DockerBackend

    try:
        with DockerBackend(Settings(sweep_on_start=False)) as backend:
            click.echo(f"removed {backend.sweep()} orphaned container(s)")
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
def doctor() -> None:
    """Say which isolation modes work here and, for each that does not, how to enable it."""
    from orchestrator.orchestrator import Orchestrator

    settings = Settings()
    names = [language.name for language in LANGUAGES]
    with Orchestrator(settings=settings) as orchestrator:
        rows = {lang: dict(orchestrator.modes(lang)) for lang in names}
    modes = list(rows[names[0]])
    widths = [max(len(lang), 3) for lang in names]
    header = " ".join(f"{lang:<{width}}" for lang, width in zip(names, widths, strict=True))
    click.echo(f"{'mode':<11} {header}  notes")
    usable = False
    for mode in modes:
        marks = ["yes" if rows[lang][mode] is None else "no" for lang in names]
        usable = usable or "yes" in marks
        reasons = sorted({r for lang in names if (r := rows[lang][mode]) is not None})
        note = " / ".join(reasons) if reasons else "ready"
        cells = " ".join(f"{mark:<{width}}" for mark, width in zip(marks, widths, strict=True))
        click.echo(f"{mode:<11} {cells}  {note}")
    allowed = ", ".join(settings.sandbox_backends or ()) or (
        "not set: docker, fast, srt, restricted (fast only for policies that list it)"
    )
    click.echo(f"\nATHENA_SANDBOX_BACKENDS: {allowed}")
    sys.exit(0 if usable else 1)


@main.command()
@click.option("--db", default=None, help="Memory store path (default: a temporary file).")
def demo(db: str | None) -> None:
    """Run python, javascript and bash examples under the three shipped policies."""
    from athena.demo import run_demo

    try:
        run_demo(db, echo=click.echo)
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("mcp")
@click.option(
    "--db",
    default=None,
    help="Memory store path or URL (default: ATHENA_MEMORY_URL, ATHENA_MEMORY_DB, ~/.athena).",
)
@click.option(
    "--policies",
    default="strict,research",
    show_default=True,
    help="Comma-separated policies the client may use (development mounts the project: opt-in).",
)
def mcp_command(db: str | None, policies: str) -> None:
    """Serve the memory API's tools over MCP on stdin/stdout (tenant default; logs on stderr)."""
    import anyio

    from athena.api import MemoryAPI
    from athena.service.mcp import serve_stdio
    from athena.service.tokens import local_tenant

    try:
        tenant = local_tenant([name.strip() for name in policies.split(",") if name.strip()])
    except SandboxError as exc:
        raise click.BadParameter(str(exc), param_hint="--policies") from exc
    try:
        anyio.run(serve_stdio, lambda: MemoryAPI.create(db), tenant)
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--tokens",
    "tokens_file",
    envvar="ATHENA_TOKENS_FILE",
    default=None,
    help="Token file: a bearer token on every request [default: $ATHENA_TOKENS_FILE; none].",
)
@click.option(
    "--db", default=None, help="Memory store path or URL (default: ATHENA_MEMORY_URL/_DB)."
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds runs in flight may take to finish on SIGTERM before they are killed.",
)
@click.option(
    "--node-id",
    envvar="ATHENA_NODE_ID",
    default=None,
    help="Serve as this node of a cluster (its containers, sweep and session ids are keyed on "
    "it; registered in the store's database) [default: $ATHENA_NODE_ID; none].",
)
@click.option(
    "--advertise-url",
    envvar="ATHENA_ADVERTISE_URL",
    default=None,
    help="Where the other nodes reach this one [default: $ATHENA_ADVERTISE_URL, else "
    "http://HOST:PORT].",
)
def serve_command(
    host: str,
    port: int,
    tokens_file: str | None,
    db: str | None,
    grace: float,
    node_id: str | None,
    advertise_url: str | None,
) -> None:
    """Serve the HTTP API (/v1, /healthz, /readyz, /metrics) and MCP at /mcp."""
    from athena.service.serve import check_listen, check_node_id, serve

    try:
        check_listen(host, tokens_file)
        if node_id is not None:
            check_node_id(node_id)
    except SandboxError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    try:
        serve(
            host=host,
            port=port,
            tokens_file=tokens_file,
            db=db,
            grace_seconds=grace,
            node_id=node_id,
            advertise_url=advertise_url,
        )
    except RequestError as exc:  # what to change in the set-up: a usage error, as above
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except SandboxError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":  # pragma: no cover
    main()
