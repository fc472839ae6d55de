"""Benchmarks that print figures side by side in one run: ``python -m eadp_lab.bench NAME``.

- ``select``: facility location, the fast greedy against the published loop (:mod:`.select`);
- ``efficiency``: time, memory, KV cache and FLOPs of every method in a real model (:mod:`.efficiency`);
- ``accuracy``: accuracy against budget of every method through ``attach`` (:mod:`.accuracy`);
- ``merge``: one report from ``accuracy`` runs of other methods on the same questions (:mod:`.merge`);
- ``flops``: the analytic prefill FLOPs and KV-cache table of the shipped 7B configs (:func:`eadp_lab.flops.main`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMANDS", "main"]

# name -> module with a ``main(argv) -> int``; imported only when its command runs
COMMANDS = {
    "select": "eadp_lab.bench.select",
    "efficiency": "eadp_lab.bench.efficiency",
    "flops": "eadp_lab.flops",
    "accuracy": "eadp_lab.bench.accuracy",
    "merge": "eadp_lab.bench.merge",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:  # the command parses the rest, --help included
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m eadp_lab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(COMMANDS))
    parser.parse_args(argv[:1])  # --help, or the error for an unknown name
    return 2


if __name__ == "__main__":
    sys.exit(main())
