"""The `crmbridge` command line: parse, call, print. One clear line on error, a traceback only with --debug."""

from __future__ import annotations

import importlib
import sqlite3
import sys

import typer

from crmbridge import __version__, logs
from crmbridge.commands import common
from crmbridge.errors import ConfigError, CrmBridgeError, MappingError

app = typer.Typer(
    name="crmbridge",
    help="Make a hosted Bitrix24 follow the company's written sales regulation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: command modules, each with register(app); optional ones may not exist yet in a checkout
COMMAND_MODULES = [
    "crmbridge.commands.sync",
    "crmbridge.commands.sandbox",
    "crmbridge.commands.demo",
    "crmbridge.commands.regulation",
    "crmbridge.commands.enforce",
    "crmbridge.commands.live",
    "crmbridge.commands.connect",
    "crmbridge.commands.kpi",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crmbridge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    common.state.debug = debug
    logs.setup(debug=debug)


for _module in COMMAND_MODULES:
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise


def main() -> None:
    """Console-script entry point: exit 0 on success, 1 on a CRM or cache error, 2 on a config/mapping error."""
    try:
        result = app(standalone_mode=False)
    except CrmBridgeError as exc:
        if common.state.debug:
            raise
        # plain writes: one line per problem, never wrapped, so logs and scripts can grep them
        if isinstance(exc, MappingError):
            sys.stderr.write("".join(f"{problem}\n" for problem in exc.problems))
        else:
            sys.stderr.write(f"crmbridge: error: {exc}\n")
        sys.exit(2 if isinstance(exc, (ConfigError, MappingError)) else 1)
    except KeyboardInterrupt:
        sys.stderr.write("crmbridge: interrupted; a sync resumes from its last commit next time\n")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except (OSError, sqlite3.Error) as exc:
        # a cache path that cannot be created, a full disk, a locked database: one line, not a traceback
        if common.state.debug:
            raise
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"crmbridge: error: {reason}{where} (check CRMBRIDGE_CACHE_PATH and the file's permissions)\n")
        sys.exit(1)
    except Exception as exc:
        # usage errors (unknown command or option, bad value): Typer bundles its own click, so match by shape
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(result, int) and result:
        sys.exit(result)


if __name__ == "__main__":
    main()
