"""``python -m eadp_lab bench NAME ...``: the project's commands."""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "bench":
        from .bench import COMMANDS

        print(f"usage: python -m eadp_lab bench {{{','.join(sorted(COMMANDS))}}} ...", file=sys.stderr)
        return 2
    from .bench import main as bench_main

    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
