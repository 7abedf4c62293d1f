"""Command-line options the benchmark topics share (each topic also runs
alone as `python -m benchmarks.<topic>`; benchmarks.suites lists them)."""
from __future__ import annotations

import argparse


def command_line(topic: str, doc: str, full_help: str,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks.<topic>`, described by the first
    paragraph of the topic's docstring, with --full."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{topic}",
                                     description=doc.split("\n\n")[0], epilog=epilog)
    parser.add_argument("--full", action="store_true", help=full_help)
    return parser


def _name_or_number(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def add_point_option(parser, fields: tuple[str, ...]) -> None:
    """--point FIELD ...: measure one point in this process and print its row
    (what a suite runs in a child process); fields that are digits arrive as
    ints. `parser` may be a group of exclusive modes."""
    parser.add_argument("--point", nargs=len(fields), metavar=fields, type=_name_or_number,
                        help="emulate one point in this process and print its row")
