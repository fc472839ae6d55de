"""Sharded evaluation with accelerate: each process runs its slice of the work, the results come back in order.

    from eadp_lab.distributed import shard_map
    results = shard_map(evaluate_one, samples)   # every process: the full list, in the order of `samples`

Launch (two CPU processes; on a machine without a GPU the processes talk through gloo)::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no -m eadp_lab.distributed demo --items 6 --json OUT
    torchrun --nproc_per_node 2 -m eadp_lab.distributed demo --items 6 --json OUT   # the same

Without a launcher everything runs in the one process. Implemented with accelerate's
``PartialState.split_between_processes`` (contiguous, uneven slices: 5 items on 2
processes are 3 + 2) and ``accelerate.utils.gather_object`` (an all-gather of picklable
objects). Taught in ``notebooks/04_full_model_benchmarks``.

How ``accelerate launch`` (1.15) behaves on a CPU-only machine, checked here:

* ``accelerate launch --cpu --num_processes 2 ...`` starts **one** process: ``--cpu`` selects
  the plain launcher, which relies on ``mpirun`` (``--mpirun_hostfile``) to fan out. The
  script sees ``MASTER_ADDR`` but no ``WORLD_SIZE``; :func:`single_process_warning` detects it.
* ``--multi_gpu --num_processes 2`` (no ``--cpu``) goes through ``torch.distributed.run`` and
  starts two processes, with ``OMP_NUM_THREADS=1`` each; :func:`process_state` then asks
  accelerate for its CPU backend (``PartialState(cpu=True)``, gloo) because there is no GPU.
* Without ``--num_machines 1 --mixed_precision no --dynamo_backend no`` and without a config
  file, ``accelerate launch`` warns that it used those defaults (it does not prompt).
  Pass ``--main_process_port`` to run two launches side by side (default 29500).

How a launched demo ends (:func:`teardown`, :func:`exit_now`): a barrier, then
``destroy_process_group``, then ``os._exit`` once stdout and stderr are flushed (the JSON is
already written, atomically). ``destroy_process_group`` does not stop gloo: its worker threads
(``pt_gloo_runloop``) and its TCP loop stay alive until the process ends. A worker that drops
the last reference to a finished collective's Python-made tensors (``all_gather_object``'s)
after the interpreter has begun shutting down takes the GIL, is ended by ``pthread_exit``, and
the C++ unwind aborts the process: ``terminate called without an active exception`` (a
scheduling race, seen once in CI). Ending with ``os._exit`` skips the interpreter's shutdown,
so that race cannot happen.

The efficiency bench (:mod:`eadp_lab.bench.efficiency`) does not use this: timings must not
compete for cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from ._io import check_output, save_report

__all__ = ["process_state", "single_process_warning", "shard_map", "demo_items", "demo", "teardown", "exit_now",
           "main"]


def process_state():
    """accelerate's ``PartialState`` for this process (created on first use).

    Uses the CPU backend (gloo) when there is no GPU or ``ACCELERATE_USE_CPU`` is set, so that
    ``torchrun`` / ``accelerate launch --multi_gpu`` processes form one group on a CPU machine.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def single_process_warning(environ=None) -> str | None:
    """A warning when ``accelerate launch --cpu --num_processes N>1`` started one process, else ``None``.

    That launcher sets ``ACCELERATE_USE_CPU`` and ``MASTER_ADDR`` but starts a single process
    unless ``mpirun`` fans it out (``WORLD_SIZE`` / ``PMI_SIZE`` / ``OMPI_COMM_WORLD_SIZE`` unset).
    """
    env = os.environ if environ is None else environ
    launched = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") and "MASTER_ADDR" in env
    fanned_out = any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if launched and not fanned_out:
        return ("accelerate launch --cpu started a single process (it needs mpirun to start more); for several "
                "CPU processes use: accelerate launch --multi_gpu --num_processes N ... (or torchrun "
                "--nproc_per_node N); running everything in this process")
    return None


def shard_map(fn: Callable[[Any], Any], items: Sequence, *, state=None) -> list:
    """``[fn(x) for x in items]``, each process computing a contiguous slice of ``items``.

    Args:
        fn: called once per item, in the process that owns it; its result must be picklable.
        items: the work items (a sequence; every process must pass the same one).
        state: a ``PartialState`` (default: :func:`process_state`).
    Returns:
        The results of every item in the order of ``items``, on every process (the main
        process usually writes them: ``state.is_main_process``).
    """
    from accelerate.utils import gather_object

    if isinstance(items, (str, bytes)) or not hasattr(items, "__len__"):
        raise ValueError(f"items must be a sequence, got {type(items).__name__}")
    state = state or process_state()
    indexed = list(enumerate(items))
    with state.split_between_processes(indexed) as mine:
        results = [(i, fn(item)) for i, item in mine]
    gathered = gather_object(results) if state.num_processes > 1 else results
    order = sorted(gathered, key=lambda pair: pair[0])
    if [i for i, _ in order] != list(range(len(indexed))):
        raise RuntimeError(f"gathered {len(order)} results for {len(indexed)} items")
    return [result for _, result in order]


# ------------------------------------------------------------------------------------------ demo
DEMO_BUDGETS = (192, 128, 64)


def demo_items(n: int, budgets: Sequence[int] = DEMO_BUDGETS) -> list[dict]:
    """``n`` work items ``{"item": i, "seed": i, "budget": budgets[i % len(budgets)]}``."""
    from ._checks import check_budget

    n = check_budget(n, "items")
    return [dict(item=i, seed=i, budget=int(budgets[i % len(budgets)])) for i in range(n)]


_MODEL = {}


def _tiny_model():
    if "model" not in _MODEL:
        from .bench.efficiency import tiny_llava

        _MODEL["model"] = tiny_llava(seed=0)
    return _MODEL["model"]


def demo_one(item: dict, method: str = "eadp", max_new_tokens: int = 8) -> dict:
    """Prune and answer one hand-made sample with the built-in tiny LLaVA (576 visual tokens).

    Returns:
        ``item``, ``budget``, ``kept`` (visual tokens the language model received),
        ``sequence`` (prompt length after pruning), ``answer`` (greedy token ids) and
        ``process`` (the index of the process that ran it).
    """
    import torch

    from .bench.efficiency import handmade_sample
    from .models import attach

    model = _tiny_model()
    sample = handmade_sample(model, seed=item["seed"], question_tokens=12 + item["seed"] % 5)
    with torch.no_grad(), attach(model, method=method, budget=item["budget"]) as pruner:
        out = model.generate(**sample, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.config.get_text_config().pad_token_id)
    record = pruner.last
    return dict(item=item["item"], budget=item["budget"], kept=sum(r.tokens_after for r in record.items),
                sequence=record.length_after, answer=out[0, sample["input_ids"].shape[1]:].tolist(),
                process=process_state().process_index)


def demo(items: int, method: str = "eadp", max_new_tokens: int = 8) -> list[dict]:
    """:func:`demo_one` over :func:`demo_items` ``(items)``, sharded with :func:`shard_map`."""
    from functools import partial

    from ._checks import check_choice
    from .methods import METHODS

    check_choice("method", method, METHODS)
    return shard_map(partial(demo_one, method=method, max_new_tokens=max_new_tokens), demo_items(items))


def teardown(state) -> None:
    """End a launched run together: a barrier (every process has finished, the main one has written
    its output), then ``destroy_process_group``. Nothing to do in a single process."""
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


def exit_now(code: int = 0) -> None:
    """Flush stdout and stderr, then end the process with ``code`` at once (``os._exit``): the
    interpreter's shutdown, where a gloo worker thread still alive could abort the process, is
    skipped (see the module docstring)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def main(argv=None, *, hard_exit: bool = False) -> int:
    """The demo command. ``hard_exit`` (the command line's): a launched process (more than one)
    ends with :func:`exit_now` after :func:`teardown`, instead of returning."""
    from ._checks import check_choice, cli_int
    from .methods import METHODS

    parser = argparse.ArgumentParser(prog="python -m eadp_lab.distributed",
                                     description="Sharded evaluation demo: the tiny LLaVA prunes and answers "
                                                 "N hand-made samples, split between the launched processes.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the tiny LLaVA with pruning on N samples, sharded")
    p.add_argument("--items", type=int, default=6, help="samples (default: %(default)s)")
    p.add_argument("--method", default="eadp", help="pruning method (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens per answer (default: %(default)s)")
    p.add_argument("--threads", type=cli_int(1), default=1,
                   help="torch threads per process (default: %(default)s; the same count gives identical answers)")
    p.add_argument("--json", help="write the gathered results here (main process, atomically; checked first)")
    args = parser.parse_args(argv)
    try:  # before the processes form a group: every one of them stops here alike
        check_choice("method", args.method, METHODS)
        demo_items(args.items)
        if args.json:
            check_output(args.json, "--json")
    except ValueError as exc:  # OutputPathError included
        parser.error(str(exc))
    warning = single_process_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    state = process_state()
    results = demo(args.items, args.method, args.max_new_tokens)
    code = 0
    if state.is_main_process:
        payload = dict(num_processes=state.num_processes, distributed_type=str(state.distributed_type),
                       items=args.items, method=args.method, max_new_tokens=args.max_new_tokens,
                       threads=args.threads, results=results)
        for r in results:
            print(f"item {r['item']:>3} (process {r['process']}): budget {r['budget']:>3} kept {r['kept']:>3} "
                  f"answer {r['answer']}")
        if args.json:
            code = save_report(args.json, payload, indent=2)
    teardown(state)
    if hard_exit and state.num_processes > 1:
        exit_now(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main(hard_exit=True))
