"""The `globallocal` command line: a thin Typer layer over the package."""

from __future__ import annotations

import errno
import re
import sys
import warnings
from functools import cache

import typer
from rich.text import Text

from globallocal.commands.batch import batch
from globallocal.commands.common import Command, Group, default_run_dir, stderr
from globallocal.commands.evaluate import evaluate
from globallocal.commands.proposals import proposals
from globallocal.commands.report import report
from globallocal.commands.segment import segment
from globallocal.commands.serve import serve
from globallocal.commands.sweep import sweep
from globallocal.errors import GlobalLocalError

app = typer.Typer(
    help="Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023).",
    no_args_is_help=True,
    add_completion=False,
    cls=Group,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C (128 + SIGINT)
# What to do after Ctrl-C, by command; the others are simply run again.
RESUME_HINTS = {"evaluate": "run the same command again to resume: finished images are kept"}


def _show_version(value: bool) -> None:
    if value:
        from globallocal import __version__

        typer.echo(f"globallocal {__version__}")
        raise typer.Exit()


@app.callback()
def _commands(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
    ),
) -> None:
    """Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023).

    Bare `globallocal` prints this help and exits with status 2 (no command given).
    """


# How the package names an option in a message: as the Python API's keyword (``clip_model=ViT-B-16``), which the
# command line shows as its flag (``--clip-model ViT-B-16``). Not inside a dotted or hyphenated name or a path.
_KEYWORD = re.compile(r"(?<![\w./-])([a-z][a-z0-9_]*)=")


@cache
def _flags() -> dict[str, str]:
    """Every option's Python name and its long flag, over all commands (one name is one flag throughout)."""
    commands = typer.main.get_command(app).commands.values()
    return {param.name: flags[0] for command in commands for param in command.params
            if param.name and (flags := [opt for opt in param.opts if opt.startswith("--")])}


def command_line_wording(message: str) -> str:
    """A message of the package as the command line says it: each option the Python API's way (``device=cpu``)
    becomes the command's flag (``--device cpu``); other ``name=`` text stays."""

    def flag(match: re.Match[str]) -> str:
        name = _flags().get(match[1])
        if name is None:
            return match[0]
        follows = message[match.end():match.end() + 1]
        return name if follows in ("", " ", ",", ";", ")", ".") else f"{name} "

    return _KEYWORD.sub(flag, message)


class _Warnings:
    """``warnings.showwarning`` for one command: each text once, in the command line's wording.

    Python's own once-per-place memory of warnings is reset whenever any code changes the warning filters
    (``catch_warnings``), so the early check of an option and the loader's check of it would both be shown.
    """

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = command_line_wording(str(message))
        if text not in self.shown:
            self.shown.add(text)
            stderr.print(Text.assemble(("warning:", "yellow"), f" {text}"))


# Each command's declaration and body live in globallocal/commands/<name>.py; importing one costs no torch.
for command in (segment, proposals, evaluate, batch, sweep, report, serve):
    app.command(cls=Command)(command)


def _command_name(arguments: list[str]) -> str | None:
    """The subcommand among the arguments (the top level takes no option values)."""
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def _fail(message: str) -> None:
    stderr.print(Text.assemble(("error:", "red"), f" {command_line_wording(message)}"))
    sys.exit(2)


# What to do about an OSError, by its errno: only a full disk wants space freed.
_OTHER_ADVICE = "choose another location"
_OS_ADVICE = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space (your quota is full) or choose another location",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "the disk is read-only; choose another location",
    errno.ESPIPE: "give a regular file, not a pipe or device",
}


def main() -> None:
    """Entry point: user and usage errors become one red line and exit code 2, never a traceback.

    Ctrl-C exits with 130 (as shells expect of an interrupted program) after
    one line saying how to carry on. Bare `globallocal` prints the help and
    exits with 2.
    """
    from typer import Abort, Exit
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    warnings.showwarning = _Warnings()
    try:
        code = app(standalone_mode=False)
    except GlobalLocalError as error:
        _fail(str(error))
    except NoArgsIsHelpError as error:
        typer.echo(error.format_message())
        sys.exit(2)
    except OSError as error:
        # A full or read-only disk, a path that is a file: the environment, not a bug.
        where = f" {error.filename}" if error.filename else ""
        _fail(f"cannot write or read{where}: {error.strerror or error}; {_OS_ADVICE.get(error.errno, _OTHER_ADVICE)}")
    except UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "globallocal"
        _fail(f"{error.format_message()} (see `{command} --help`)")
    except ClickException as error:
        _fail(error.format_message())
    except (KeyboardInterrupt, Abort):
        _interrupted()
    except Exit as done:
        if done.exit_code == INTERRUPTED:  # typer turns Ctrl-C inside a command into Exit(130)
            _interrupted()
        sys.exit(done.exit_code)
    if code == INTERRUPTED:  # ... which click hands back as a return value outside standalone mode
        _interrupted()
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _interrupted() -> None:
    hint = RESUME_HINTS.get(_command_name(sys.argv[1:]) or "", "run the same command again")
    stderr.print(Text.assemble(("interrupted", "red"), f": {hint}"))
    sys.exit(INTERRUPTED)


__all__ = ["app", "default_run_dir", "main"]

if __name__ == "__main__":
    main()
