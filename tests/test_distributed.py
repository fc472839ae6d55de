"""Sharded evaluation: two accelerate CPU processes give the single-process results, in order."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from eadp_lab import distributed

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def test_shard_map_in_one_process_keeps_order():
    assert distributed.shard_map(lambda x: x * x, list(range(7))) == [x * x for x in range(7)]
    assert distributed.shard_map(str, []) == []
    with pytest.raises(ValueError, match="items"):
        distributed.shard_map(str, "abc")


def test_demo_items():
    items = distributed.demo_items(4, budgets=(10, 20))
    assert [(i["item"], i["seed"], i["budget"]) for i in items] == [(0, 0, 10), (1, 1, 20), (2, 2, 10), (3, 3, 20)]
    with pytest.raises(ValueError, match="items"):
        distributed.demo_items(0)


def test_warns_when_accelerate_cpu_starts_one_process():
    launched = dict(ACCELERATE_USE_CPU="True", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    assert "--multi_gpu" in distributed.single_process_warning(launched)
    assert distributed.single_process_warning(dict(launched, WORLD_SIZE="2")) is None
    assert distributed.single_process_warning({}) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(items):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs
    try:
        return distributed.demo(items)
    finally:
        torch.set_num_threads(threads)


def test_two_cpu_processes_match_one(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "the accelerate command is part of the environment"
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "eadp_lab.distributed", "demo", "--items", "6", "--json", str(out)],
        capture_output=True, text=True, env=ENV, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["num_processes"] == 2 and "MULTI_CPU" in payload["distributed_type"]
    launched = payload["results"]
    assert [r["process"] for r in launched] == [0, 0, 0, 1, 1, 1]  # each process did its contiguous slice
    single = _single_process(6)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "process"} for r in rows]  # noqa: E731
    assert strip(launched) == strip(single)
    assert [r["item"] for r in launched] == list(range(6))
    assert [r["kept"] for r in launched] == [192, 128, 64, 192, 128, 64]
    assert all(len(r["answer"]) == 8 for r in launched)


class _FakeState:
    """Two launched processes, seen from the main one: records the teardown calls in ``log``."""

    num_processes, process_index, is_main_process, distributed_type = 2, 0, True, "DistributedType.MULTI_CPU"

    def __init__(self, log):
        self.log = log

    def wait_for_everyone(self):
        self.log.append("barrier")

    def destroy_process_group(self):
        self.log.append("destroy")


class _Exited(Exception):
    pass


def test_a_launched_demo_ends_with_barrier_destroy_then_os_exit(tmp_path, monkeypatch, capsys):
    """The exit path is fixed: results written, a barrier, destroy_process_group, flushed output, then
    os._exit, so no gloo thread can meet the interpreter's shutdown (the CI abort)."""
    log = []
    out = tmp_path / "demo.json"
    monkeypatch.setattr(distributed, "process_state", lambda: _FakeState(log))
    monkeypatch.setattr(distributed, "demo", lambda *a: [dict(item=0, process=0, budget=64, kept=64, answer=[1])])

    def fake_exit(code):
        log.append(("exit", code, out.exists()))
        raise _Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(_Exited):
        distributed.main(["demo", "--items", "1", "--json", str(out)], hard_exit=True)
    assert log == ["barrier", "destroy", ("exit", 0, True)]
    assert "item   0 (process 0)" in capsys.readouterr().out
    log.clear()
    assert distributed.main(["demo", "--items", "1"]) == 0  # called as a function: it returns
    assert log == ["barrier", "destroy"]


@pytest.mark.parametrize("argv, message", [(["--threads", "0"], "argument --threads: must be >= 1, got 0"),
                                           (["--threads", "-1"], "argument --threads: must be >= 1, got -1"),
                                           (["--items", "0"], "items"), (["--method", "nosuch"], "method")])
def test_bad_arguments_stop_every_process_before_the_group_forms(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(distributed, "process_state", lambda: pytest.fail("the process group was formed"))
    with pytest.raises(SystemExit) as exc:
        distributed.main(["demo", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_an_unwritable_json_path_stops_before_the_group_forms(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "process_state", lambda: pytest.fail("the process group was formed"))
    with pytest.raises(SystemExit) as exc:
        distributed.main(["demo", "--json", str(tmp_path)])
    assert exc.value.code == 2 and str(tmp_path) in capsys.readouterr().err
