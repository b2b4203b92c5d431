"""The Typer application and the edge where user errors become one line and exit 1."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from milesdeep.errors import MilesDeepError, UsageError
from milesdeep.pipeline.atomic import sigterm_as_interrupt

app = typer.Typer(
    name="miles-deep",
    help="Classify every second of a video with a CNN, then cut it by class without "
    "re-encoding.",
    no_args_is_help=True,
    rich_markup_mode="markdown",  # reflows docstring paragraphs to the terminal width
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Progress and summaries go to stderr so stdout stays clean for scripts.
console = Console(stderr=True, highlight=False)


def fail(message: str) -> None:
    """Report a user error as one line and exit 1."""
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(1)


def run_app(argv: list[str] | None = None) -> int:
    debug = bool(os.environ.get("MILESDEEP_DEBUG"))
    try:
        # Without standalone mode, click returns typer.Exit's code instead of raising it.
        # SIGTERM stops every command as Ctrl-C does: no temporaries left behind.
        with sigterm_as_interrupt():
            rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int):
            return rc
    except MilesDeepError as e:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, markup=True)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except Exception as e:  # click's usage errors arrive here in non-standalone mode
        # By class name: Typer 0.2x vendors its own click (a fresh install has no `click` to
        # import), and plain click's classes are named the same.
        names = {c.__name__ for c in type(e).__mro__}
        if "Abort" in names:
            console.print("[bold red]aborted[/]")
            return 1
        if "UsageError" in names and getattr(e, "ctx", None) is not None:
            # One line, as every other error: what is wrong and where the help is.
            console.print(f"[bold red]error:[/] {escape(e.format_message())} (see "
                          f"{escape(e.ctx.command_path)} -h)", soft_wrap=True, markup=True)
            return int(e.exit_code)
        if "ClickException" in names and hasattr(e, "show"):
            e.show(file=sys.stderr)
            return int(getattr(e, "exit_code", 2))
        raise
    return 0
