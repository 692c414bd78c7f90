"""Errors on the command line: torpor's own failures are one line on stderr, exit code 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def is_user_error(e: BaseException) -> bool:
    """torpor's own errors and OS errors are reported as one line; anything else is a bug
    and keeps its traceback."""
    return isinstance(e, OSError) or type(e).__module__.startswith("torpor.")


def error_line(e: BaseException) -> None:
    """Report an error as exactly one line on stderr."""
    msg = " ".join((str(e) or type(e).__name__).split())
    sys.stderr.write(f"torpor: error: {msg}\n")
    sys.stderr.flush()


def clean_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as e:
            if not is_user_error(e):
                raise
            error_line(e)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


