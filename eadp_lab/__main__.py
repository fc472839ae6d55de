"""``python -m eadp_lab bench NAME ...``, ``python -m eadp_lab probe ...``, ``python -m eadp_lab study
failure-axes ...``, ``python -m eadp_lab lmms-task ...`` and ``python -m eadp_lab lmms-summary ...``: the
project's commands."""

import sys

STUDIES = ("failure-axes",)  # python -m eadp_lab study NAME: eadp_lab.failure_axes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "probe":
        from .labmodels.probe import main as probe_main

        return probe_main(argv[1:])
    if argv and argv[0] == "lmms-task":
        from .harness.task import main as task_main

        return task_main(argv[1:])
    if argv and argv[0] == "lmms-summary":
        from .harness.summary import main as summary_main

        return summary_main(argv[1:])
    if len(argv) >= 2 and argv[0] == "study" and argv[1] in STUDIES:
        from .failure_axes import main as study_main

        return study_main(list(argv[2:]))
    if not argv or argv[0] != "bench":
        from .bench import COMMANDS

        print(f"usage: python -m eadp_lab bench {{{','.join(sorted(COMMANDS))}}} ...\n"
              "       python -m eadp_lab probe [--seed S] [--scenes N] [--json OUT]\n"
              "       python -m eadp_lab lmms-task --question-file F --image-folder D --out TASKS\n"
              "       python -m eadp_lab lmms-summary RUN_FOLDER ... [--csv OUT]\n"
              f"       python -m eadp_lab study {{{','.join(STUDIES)}}} --json OUT [--seed S] [--questions Q] "
              "[--budgets 28,14] [--threads N]", file=sys.stderr)
        return 2
    from .bench import main as bench_main

    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
