"""The `rmt` command line. Each sub-command lives next to the code it drives and registers itself here.

`main` is the one boundary between the commands and the user: the project's own errors (`REPORTED`), OS errors
on a path named on the command line (an unwritable --out, a full disk) and `SystemExit("message")` become one
line, ``rmt <command>: error: <message>``, on stderr and exit status 2, the status `argparse` uses for bad
arguments. Anything else that escapes a command is a bug and keeps its traceback. A closed stdout (``rmt data
show ... | head``) ends the command quietly, as a closed pipe ends other Unix tools (status 141 = 128 + SIGPIPE).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from rmt.model.config import ConfigError
from rmt.errors import RMTError

ERROR = 2  # exit status of every reported error (argparse uses 2 for bad arguments)
BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE

# The project's error types: RMTError, and those that predate `rmt.errors` with other bases (see `_reported`).
REPORTED: tuple[type[BaseException], ...] = (RMTError, ConfigError)

# Arguments that name files or folders: an OS error on one of these paths (or inside it) is the user's input,
# reported in one line; an OS error anywhere else is a bug and keeps its traceback.
PATH_ARGUMENTS = ("out", "resume", "config", "checkpoint", "run", "runs", "hf", "path", "data", "predictions", "facts")

# Commands whose output folder this boundary claims (locks, refuses to mix with another run, --overwrite) on
# the command's behalf, because their code does not do it itself: command -> (flag, the folder from args).
# `train`, `demo`, `bench` and `reproduce` claim their folders in their own run functions.
CLAIMED_HERE = {
    "export": ("--hf RUN", lambda a: a.hf[1]),
    "memory build": ("--out", lambda a: a.out),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmt", description="Recurrent Memory Transformer")
    sub = parser.add_subparsers(dest="command", required=True)
    # Imported lazily so `rmt --help` stays fast and one broken sub-command cannot hide the others.
    from rmt.evaluation import generate, report
    from rmt.harness import bench, demo, reproduce
    from rmt.tasks import commands as task_commands
    from rmt.training import commands as training_commands

    demo.register(sub)
    bench.register(sub)
    generate.register(sub)
    reproduce.register(sub)
    report.register(sub)
    training_commands.register(sub)
    task_commands.register(sub)
    from rmt.integrations import commands as integration_commands  # export, eval, memory (optional extras)

    integration_commands.register(sub)
    for name in CLAIMED_HERE:
        p = _subparser(parser, name.split())
        if p is not None and "--overwrite" not in p._option_string_actions:
            p.add_argument("--overwrite", action="store_true",
                           help="write into an output folder that holds an earlier result: it is moved to DIR.old-N "
                                "first, not deleted")
    return parser


def _subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser | None:
    for name in path:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or name not in actions[0].choices:
            return None
        parser = actions[0].choices[name]
    return parser


def command_name(args: argparse.Namespace) -> str:
    """'train', 'data show', 'memory build', ... (what the error lines start with)."""
    name = args.command
    for attr in ("data_command", "memory_command"):
        if getattr(args, attr, None):
            name += " " + getattr(args, attr)
    return name


def _named_paths(args: argparse.Namespace) -> list[Path]:
    paths = []
    for dest in PATH_ARGUMENTS:
        value = getattr(args, dest, None)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, os.PathLike)) and str(v):
                paths.append(Path(os.path.abspath(v)))
    return paths


def _on_named_path(e: OSError, args: argparse.Namespace) -> bool:
    named = _named_paths(args)
    for f in (e.filename, e.filename2):
        if isinstance(f, (str, os.PathLike)) and str(f):
            p = Path(os.path.abspath(f))
            if any(p == q or q in p.parents for q in named):
                return True
    return False


def _os_message(e: OSError) -> str:
    if e.filename is None:
        return str(e)  # raised by the project with its own message (e.g. "RUN: no such run or checkpoint folder")
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
    return f"{where}: {e.strerror or e}"


def _report(name: str, message: str) -> int:
    print(f"rmt {name}: error: {message}", file=sys.stderr)
    return ERROR


def _quiet_broken_pipe() -> int:
    # Nothing more can reach the reader; point stdout at /dev/null so that the interpreter's final flush does
    # not raise a second BrokenPipeError on the way out.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return BROKEN_PIPE


def _run(args: argparse.Namespace, name: str) -> int:
    if name not in CLAIMED_HERE:
        return int(args.func(args) or 0)
    from rmt.rundir import claim_folder

    flag, folder = CLAIMED_HERE[name]
    with claim_folder(folder(args), overwrite=getattr(args, "overwrite", False), flag=flag):
        return int(args.func(args) or 0)


def _reported() -> tuple[type[BaseException], ...]:
    try:
        from rmt.integrations import MissingExtraError  # "pip install 'rmt[hf]'" and the like
    except ImportError:
        return REPORTED
    return REPORTED + (MissingExtraError,)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = command_name(args)
    try:
        return _run(args, name)
    except _reported() as e:
        return _report(name, str(e))
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        if e.filename is None and e.errno is None or _on_named_path(e, args):
            return _report(name, _os_message(e))
        raise
    except SystemExit as e:
        # Commands that end with SystemExit("message") (argparse-style); argparse's own exits carry a number.
        if isinstance(e.code, str):
            message = e.code.removeprefix(f"rmt {name}: error: ")
            return _report(name, message)
        raise


if __name__ == "__main__":
    sys.exit(main())
