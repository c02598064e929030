"""The ``pycsa`` command: the only place that prints tables, draws plots and shows
progress. One module per command (demo, extract, evaluate, train, rerank, tune); output.py holds what
they share on screen, rerankers.py how a method name becomes a fitted re-ranker."""
from __future__ import annotations

import argparse
import sys

import pycsa

from . import demo, evaluate, extract, rerank, train, tune

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pycsa", description="Fast re-ranking for image retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, extract, evaluate, train, rerank, tune):
        command.add_parser(sub)
    methods = sub.add_parser("methods", help="list the re-rankers")
    methods.set_defaults(run=lambda a: print("\n".join(pycsa.available())) or 0)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, IndexError, FileNotFoundError, ImportError, FloatingPointError) as exc:
        print(f"pycsa: error: {exc}", file=sys.stderr)
        return 2
