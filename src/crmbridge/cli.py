"""The `crmbridge` command line: parse, call, print. One clear line on error, a traceback only with --debug."""

from __future__ import annotations

import importlib
import logging
import sqlite3
import sys
from pathlib import Path

import typer

from crmbridge import __version__, logs
from crmbridge.commands import common
from crmbridge.connectors.http import redact
from crmbridge.errors import ConfigError, CrmBridgeError, MappingError
from crmbridge.notices import LOGGER as NOTICE_LOGGER
from crmbridge.text import for_terminal

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
    # long waits, skipped records, held deletions: shown without --debug, one plain line each
    notices = logging.getLogger(NOTICE_LOGGER)
    notices.setLevel(logging.INFO)
    for handler in [h for h in notices.handlers if isinstance(h, NoticeLines)]:
        notices.removeHandler(handler)
    if not debug:
        notices.addHandler(NoticeLines())
    notices.propagate = debug


class NoticeLines(logging.Handler):
    """`crmbridge: <notice>` on the stderr of the moment (tests and wrappers swap it)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"crmbridge: {for_terminal(redact(record.getMessage()))}\n")
        except Exception:  # noqa: BLE001 - a notice must never break the command it reports on
            self.handleError(record)


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
        # plain writes: one line per problem, never wrapped, so logs and scripts can grep them; what came from
        # a CRM or a file (an error description, a value) is shown, never run by the terminal
        if isinstance(exc, MappingError):
            sys.stderr.write("".join(f"{for_terminal(problem)}\n" for problem in exc.problems))
        else:
            sys.stderr.write(f"crmbridge: error: {for_terminal(exc)}\n")
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
        sys.stderr.write(f"crmbridge: error: {for_terminal(_os_error(exc))}\n")
        sys.exit(1)
    except Exception as exc:
        # usage errors (unknown command or option, bad value): Typer bundles its own click, so match by shape
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            context = getattr(exc, "ctx", None)
            path = getattr(context, "command_path", None) or "crmbridge"
            sys.stderr.write(f"crmbridge: error: {for_terminal(exc.format_message())} (see `{path} --help`)\n")
            sys.exit(exc.exit_code)
        raise
    if isinstance(result, int) and result:
        sys.exit(result)


def _os_error(exc: OSError | sqlite3.Error) -> str:
    """One line naming the real cause: which file, what happened; the cache's setting only when it is the cache."""
    if isinstance(exc, sqlite3.Error):
        return f"the cache database: {exc} (check CRMBRIDGE_CACHE_PATH and that no other program holds the file)"
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    if not exc.filename:
        return reason
    name = str(exc.filename)
    try:
        cache = str(common.settings().cache_path)
    except CrmBridgeError:
        cache = None
    # the cache, a file beside it (-wal, the limiter's bucket file) or a folder on its path (created before the cache)
    if cache and (name.startswith(cache) or Path(name) in Path(cache).parents):
        return f"{reason}: {name} (check CRMBRIDGE_CACHE_PATH and the permissions of the file and its folder)"
    return f"{reason}: {name} (check the path and its permissions)"


if __name__ == "__main__":
    main()
