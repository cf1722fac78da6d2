"""Entry-point error reporting: a user mistake is one line that names the thing, not a traceback wall."""
from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

# Raised by our own checks for bad input (missing files, wrong layout, invalid numbers, incompatible
# checkpoints, a full disk, a NaN loss). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    return isinstance(err, USER_ERRORS)


def _unwrap_instantiation(err: BaseException) -> BaseException:
    """Hydra's `instantiate` wraps what a config's target raises (a wrong dataset layout found by
    the DataModule's constructor, a bad VAE option) in InstantiationException; the cause is the
    user's error."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def report_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: user errors print `error: <message>` and exit 1; SIGTERM (after
    Lightning has stopped the loop and the interrupt checkpoint is written) exits 143 like an
    untrapped SIGTERM, so schedulers and `make` see a stopped job, not a finished one.
    HYDRA_FULL_ERROR=1 re-raises everything with its traceback."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Imported here, after Hydra parsed the command line, so `--help` stays fast.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            return main(*args, **kwargs)
        except SIGTERMException:
            print("stopped by SIGTERM; resume with ckpt_path=<run dir>/checkpoints/last.ckpt", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        except Exception as err:
            cause = _unwrap_instantiation(err)
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or not _is_user_error(cause):
                raise
            print(f"error: {cause}", file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(1)

    return wrapper
