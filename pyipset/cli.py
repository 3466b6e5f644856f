"""The `pyipset` command (also `python -m pyipset`)."""

from __future__ import annotations

import argparse
import sys

from . import demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyipset",
        description="Kubernetes NetworkPolicy on ipsets: native sets, compiler, verifier, kernel backend.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="build and exercise the native sets on the built-in three-tier example")
    p.add_argument("--members", type=int, default=100_000,
                   help="members for the batch throughput check (default 100000)")
    p.set_defaults(run=demo.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:
        print(f"pyipset {args.command}: error: {exc}", file=sys.stderr)
        return 1
