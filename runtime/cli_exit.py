"""Exit codes and error lines of the `task-ingress` command line (SPEC §9).

0 success; 1 the checked thing failed (a broken invariant, a failed verification, a
rejected request); 2 usage error or could not start; 130 interrupted. A user's mistake is
one line on stderr naming the problem and what to do, exit 2, never a traceback. A
traceback is printed only for a bug in task-ingress, followed by a line saying so.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer

EXIT_OK = 0
EXIT_FAILED = 1
"""The checked thing failed (and, with the bug line, an unexpected crash)."""
EXIT_USAGE = 2
"""Usage error, or could not start."""
EXIT_INTERRUPTED = 130
PROG = "task-ingress"
BUG_LINE = (f"{PROG}: internal error: the traceback above is a bug in task-ingress, not "
            "something you did; please report it with the command you ran")


def _click_class(name: str) -> type[BaseException]:
    """A click exception class by name: typer vendors click in recent versions and uses
    click itself in older ones; `typer.BadParameter` is a subclass either way."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name:
            return cls
    module = sys.modules[typer.BadParameter.__module__]
    found = getattr(module, name, None)
    return found if isinstance(found, type) else _Never


class _Never(Exception):
    """Stands in for a click exception this version does not have (never raised)."""


_USAGE_ERROR = _click_class("UsageError")
_CLICK_EXCEPTION = _click_class("ClickException")
_NO_ARGS_IS_HELP = _click_class("NoArgsIsHelpError")


class UsageProblem(typer.BadParameter):
    """The command cannot do what was asked (bad option, unwritable path, nothing to
    connect to): its message is the one line the user sees, and the exit status is 2
    (a click usage error, so typer's own runner exits 2 with it too)."""

    def format_message(self) -> str:
        """The message alone (no `Invalid value:` prefix)."""
        return self.message


def check_event_loop_choice() -> None:
    """Refuse a misspelt TASK_INGRESS_EVENT_LOOP before a command starts anything: it must
    not run, or measure, the wrong loop (runtime/eventloop.py)."""
    from task_ingress.runtime.eventloop import loop_factory

    try:
        loop_factory()
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None


def one_line(text: str, limit: int | None = None) -> str:
    """`text` folded onto one line (error messages of libraries can span several), cut to
    `limit` characters when given (a database's error can quote a whole statement)."""
    return " ".join(str(text).split())[:limit]


def say(line: str) -> None:
    """One line on stderr."""
    print(one_line(line), file=sys.stderr, flush=True)


def run(app: Any, argv: Sequence[str] | None = None) -> int:
    """Run the typer `app` on `argv` and return the exit status, per this module's rules."""
    from task_ingress.runtime.errors import RuntimeStartError

    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name=PROG,
                 standalone_mode=False)
    except UsageProblem as exc:
        ctx = getattr(exc, "ctx", None)
        say(f"{ctx.command_path if ctx is not None else PROG}: {exc.message}")
        return EXIT_USAGE
    except _NO_ARGS_IS_HELP as exc:
        exc.show()  # type: ignore[attr-defined]
        return EXIT_USAGE
    except _USAGE_ERROR as exc:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else PROG
        say(f"{where}: {exc.format_message()} (see: {where} --help)")  # type: ignore[attr-defined]
        return EXIT_USAGE
    except _CLICK_EXCEPTION as exc:
        say(f"{PROG}: {exc.format_message()}")  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", EXIT_FAILED))
    except RuntimeStartError as exc:
        say(f"{PROG}: could not start: {exc}")
        return EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        say(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to say, and nothing to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception:
        traceback.print_exc()
        say(BUG_LINE)
        return EXIT_FAILED
    return rv if isinstance(rv, int) else EXIT_OK
