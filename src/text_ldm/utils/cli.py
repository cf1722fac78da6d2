"""Entry-point error reporting: a user mistake is one line that names the thing, not a traceback wall.
Also the cheap checks of a composed config that the entry points run before their heavy imports
(torch, diffusers, Lightning), so a bad argument is refused in a moment; nothing here imports them."""
from __future__ import annotations

import errno
import functools
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Raised by our own checks for bad input (missing files, wrong layout, invalid numbers, incompatible
# checkpoints, a full disk, a NaN loss). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# The first bytes of what torch.save writes: a zip archive, or (before torch 1.6) a pickle.
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    return isinstance(err, USER_ERRORS)


def _is_sigterm(err: BaseException) -> bool:
    # Lightning is looked up, not imported: a run that never imported it cannot have raised its exception.
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(err, module.SIGTERMException)


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
        try:
            return main(*args, **kwargs)
        except BaseException as err:  # Lightning's SIGTERMException is a SystemExit, not an Exception
            if _is_sigterm(err):
                print("stopped by SIGTERM; resume with ckpt_path=<run dir>/checkpoints/last.ckpt", file=sys.stderr)
                sys.exit(128 + signal.SIGTERM)
            if not isinstance(err, Exception):
                raise
            cause = _unwrap_instantiation(err)
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or not _is_user_error(cause):
                raise
            print(f"error: {cause}", file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            sys.exit(1)

    return wrapper


# Free text on the command line -----------------------------------------------------------------------

def hydra_quoted(text: str) -> str:
    """`text` as a single-quoted Hydra override value whose composed config value is `text` again.
    Inside quotes Hydra unescapes only backslashes before a quote or the end, and OmegaConf then reads
    `${` as an interpolation and `\\${` as literal text: a run of backslashes before either doubles."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


def _already_quoted(key: str, value: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if len(value) < 2 or value[0] not in "'\"" or value[-1] != value[0]:
        return False
    try:
        return isinstance(OverridesParser.create().parse_override(f"{key}={value}").value(), str)
    except HydraException:  # not one quoted string
        return False


def quote_free_text(argv: list[str], keys: Iterable[str]) -> list[str]:
    """Rewrite `key=<any text>` (also `+key=`, `++key=`) for each of `keys` into a quoted override, so
    that commas, apostrophes, colons, brackets, `=` or `${` in a prompt stay text instead of becoming
    Hydra syntax (a sweep, a lexer error, an interpolation). Left as they are: `null`, and a value
    already wholly quoted for Hydra (`'prompt="a, b"'`, as command lines written for Hydra do)."""
    pattern = re.compile(rf"^(\+{{0,2}})({'|'.join(map(re.escape, keys))})=(.*)\Z", re.DOTALL)
    out = []
    for arg in argv:
        match = pattern.match(arg)
        if match and match.group(3) != "null" and not _already_quoted(match.group(2), match.group(3)):
            arg = f"{match.group(1)}{match.group(2)}={hydra_quoted(match.group(3))}"
        out.append(arg)
    return out


# Checks of a composed config ------------------------------------------------------------------------

def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def value_problems(cfg: DictConfig, ints: Iterable[str] = (), numbers: Iterable[str] = (),
                   bools: Iterable[str] = (), nullable: Iterable[str] = ()) -> list[str]:
    """`key=value must be an integer` (a number, true or false) for each dotted key whose value has
    the wrong type: Hydra reads `guidance_scale=abc` as a string, which would fail far from the key."""
    nullable = set(nullable)
    problems = []
    for kind, keys, ok in (("an integer", ints, _is_int), ("a number", numbers, _is_number),
                           ("true or false", bools, lambda v: isinstance(v, bool))):
        for key in keys:
            value = OmegaConf.select(cfg, key)
            if not (value is None and key in nullable) and not ok(value):
                problems.append(f"{key}={_shown(value)} must be {kind}")
    return problems


def require(cfg: DictConfig, key: str, what: str) -> None:
    """A `???` key left unset: one line saying what to give, instead of omegaconf's MissingMandatoryValue."""
    if OmegaConf.is_missing(cfg, key):
        raise ValueError(f"{key}=PATH is required ({what})")


def check_checkpoint_file(path: str | os.PathLike, key: str | None = None) -> None:
    """FileNotFoundError if `path` is missing, ValueError if it is a directory or not a file torch.save
    wrote (reads four bytes); `key` names the config key in the message."""
    path = Path(path)
    subject = f"{key}={path}" if key else f"checkpoint {path}"
    if path.is_dir():
        hints = [c for c in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if c.is_file()]
        hint = f"; did you mean {key or 'ckpt'}={hints[0]}?" if hints else \
            " (a training checkpoint is a .ckpt file, such as <run dir>/checkpoints/last.ckpt)"
        raise ValueError(f"{subject} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{subject} does not exist")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise ValueError(f"{subject} cannot be read ({err.strerror})") from err
    if not head.startswith(CHECKPOINT_MAGIC):
        found = "an empty file" if not head else "not a file that torch.save wrote"
        raise ValueError(f"{path} is not a text_ldm training checkpoint ({found}; "
                         "train.py writes <run dir>/checkpoints/last.ckpt)")


def check_input_file(key: str, path: str | os.PathLike | None) -> None:
    """FileNotFoundError / ValueError when `key=path` is missing or a directory; nothing for an unset key."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{key}={path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path} does not exist")


def check_output_dir(key: str, path: str | os.PathLike | None) -> None:
    """ValueError when `key=path` cannot be created or written to as a directory. Creates nothing."""
    if path is None:
        return
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file"
        raise ValueError(f"{key}={path} cannot be a directory: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={path} is not writable ({existing} does not allow writing)")
