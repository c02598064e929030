"""The ``pycsa`` command: the only place that prints tables, draws plots and shows
progress. One module per command (demo, extract, evaluate, train, rerank, tune); output.py holds what
they share on screen, rerankers.py how a method name becomes a fitted re-ranker."""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import zipfile

import pycsa

from . import demo, evaluate, extract, rerank, train, tune

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one `pycsa: error:` line like every other user error (its usage
    block would bury the message); subcommands inherit the class. Still exits 2 via SystemExit."""

    def error(self, message):
        self.exit(2, f"pycsa: error: {message} (see `{self.prog} --help`)\n")


def main(argv=None) -> int:
    parser = _Parser(prog="pycsa", description="Fast re-ranking for image retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, extract, evaluate, train, rerank, tune):
        command.add_parser(sub)
    methods = sub.add_parser("methods", help="list the re-rankers")
    methods.set_defaults(run=lambda a: print("\n".join(pycsa.available())) or 0)

    args = parser.parse_args(argv)
    try:
        # a command's named presets (pycsa train --recipe) become defaults: parsed again, given flags win
        presets = getattr(args, "presets", None)
        defaults = presets(args) if presets is not None else {}
        if defaults:
            args.subparser.set_defaults(**defaults)
            args = parser.parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        print("pycsa: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure reaches the user as one line
        if os.environ.get("PYCSA_TRACEBACK"):
            raise
        print(f"pycsa: error: {describe(exc)}", file=sys.stderr)
        if isinstance(exc, USER_ERRORS):
            return 2
        print("pycsa: this looks like a bug in pycsa; rerun with PYCSA_TRACEBACK=1 and report what it "
              "prints", file=sys.stderr)
        return 1


# What bad input, files or settings raise (pycsa's checks and the libraries under them);
# anything else is a bug and says so, still without a traceback unless asked for.
USER_ERRORS = (ValueError, TypeError, IndexError, KeyError, LookupError, OSError, ImportError,
               FloatingPointError, MemoryError, EOFError, UnicodeError, pickle.UnpicklingError,
               zipfile.BadZipFile, NotImplementedError,
               # a RuntimeError subclass, but RuntimeError itself is not listed: input nested past
               # Python's recursion limit (e.g. a --config JSON of thousands of nested arrays)
               RecursionError)


def describe(exc: BaseException) -> str:
    """The message alone (a KeyError's str() is its repr), and the kind when it says nothing."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    if isinstance(exc, MemoryError):
        text = f"out of memory{': ' + text if text else ''}"
    return text or type(exc).__name__
