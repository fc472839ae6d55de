"""Benchmarks that print figures side by side in one run: ``python -m eadp_lab.bench NAME``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv=None) -> int:
    from . import select

    commands = {"select": select}
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(commands))
    args, rest = parser.parse_known_args(argv)
    return commands[args.name].main(rest)


if __name__ == "__main__":
    sys.exit(main())
