"""Command line: ``napari-leukemia analyze`` runs the whole analysis on smear images, without napari;
``train`` and ``evaluate`` make and score classifiers from a dataset (``train --cv K``: cross-validation by patient);
``export`` writes a classifier as an ONNX model.

Research use only: not a diagnostic device.

Per image, ``DIR/<stem>/`` receives ``labels.tif``, ``cells.csv``, ``summary.json`` and ``overlay.png``;
``DIR/summary.csv`` holds one row per image. Exit codes: 0 all images analysed, 1 some image failed,
2 usage error or nothing could start (existing summary, bad model, bad device), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..core.config import DISCLAIMER
from . import analyze, export, training
from .common import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

__all__ = ["build_parser", "main", "DISCLAIMER"]


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-leukemia`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="napari-leukemia",
        description="Find and classify leukaemic cells in Wright-Giemsa blood smears. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    analyze.add_commands(sub)
    training.add_commands(sub)
    export.add_commands(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else EXIT_USAGE)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UsageError as err:
        args.subparser.print_usage(sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
