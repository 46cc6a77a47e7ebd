"""Errors a user can act on, and the CLI wrapper that prints them without a traceback."""

from __future__ import annotations

import errno
import functools
import sys


class UserError(Exception):
    """Bad input or configuration: the message says what is wrong, where, and what to do.

    Command-line tools print it on one line (or one line per problem) and exit with code 2.
    """

    exit_code = 2


class ConfigError(UserError):
    """An impossible configuration; one line per violated constraint, each naming the fix."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class CheckpointError(UserError):
    """A missing, incomplete or foreign checkpoint."""


class EngineError(UserError):
    """A rollout engine outside the trainer died, hung or refused a request; the message says what
    happened, where its log is, and which checkpoint a rerun resumes from."""

    exit_code = 3


def cli_errors(main):
    """Decorator for console-script entry points: UserError -> 'error: ...' on stderr, exit 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            for line in str(e).splitlines() or [type(e).__name__]:
                print(f"error: {line}", file=sys.stderr)
            sys.exit(e.exit_code)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            print(f"error: no space left on device{f' writing {e.filename}' if e.filename else ''}: free space "
                  "there (checkpoints, data caches and logs are written to run.dir and data.cache_dir), then rerun",
                  file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapped
