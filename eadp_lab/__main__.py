"""``python -m eadp_lab bench NAME ...`` and ``python -m eadp_lab probe ...``: the project's commands."""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "probe":
        from .labmodels.probe import main as probe_main

        return probe_main(argv[1:])
    if not argv or argv[0] != "bench":
        from .bench import COMMANDS

        print(f"usage: python -m eadp_lab bench {{{','.join(sorted(COMMANDS))}}} ...\n"
              "       python -m eadp_lab probe [--seed S] [--scenes N] [--json OUT]", file=sys.stderr)
        return 2
    from .bench import main as bench_main

    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
