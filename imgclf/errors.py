"""Errors a user can fix (bad params, bad data) and the stage entry point that reports them in one line."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class PipelineError(Exception):
    """An error caused by the user's input: reported as one line, never as a traceback."""


class ConfigError(PipelineError):
    """A missing, unknown, mistyped or out-of-range key in params.yaml."""


class DataError(PipelineError):
    """Input data that the pipeline cannot use: a missing folder, an empty class, a bad checkpoint."""


def stage_main(main: Callable[[], None]) -> Callable[[], None]:
    """Wrap a stage's main() so that a PipelineError prints `error: ...` and exits with status 2."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except PipelineError as err:
            # One line naming the file or key; the traceback would only bury it.
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
