"""The efficiency bench: runs end to end on the tiny LLaVA, its figures are the analytic ones, bad input is refused."""

import json
import os
import subprocess
import sys
import types

import pytest
import torch

import tiny_vlms
from eadp_lab.bench import efficiency as eff
from eadp_lab.flops import kv_cache_bytes, prefill_flops

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
ROW_FIELDS = {
    "method", "budget", "visual_tokens_before", "visual_tokens", "text_tokens", "sequence_before", "sequence",
    "prefill_ms", "overhead_ms", "prefill_model_ms", "hook_forward_ms", "generate_ms", "new_tokens",
    "prefill_flops", "prefill_gflops", "kv_cache_bytes", "kv_cache_bytes_analytic", "kv_cache_mib",
    "kv_cache_analytic_mib", "kv_cache_match", "peak_memory_mib", "peak_memory_delta_mib", "memory_source",
    "prefill_speedup", "prefill_model_speedup", "generate_speedup", "flops_ratio", "samples",
    "prefill_ms_all", "generate_ms_all", "overhead_ms_all",
}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One CLI run on tiny-llava: 2 methods x 2 budgets (+ none), 1 repeat. ``(stdout, JSON payload)``."""
    out = tmp_path_factory.mktemp("eff") / "efficiency.json"
    proc = subprocess.run(
        [sys.executable, "-m", "eadp_lab", "bench", "efficiency", "--model", "tiny-llava", "--methods", "eadp,pool",
         "--budgets", "128,64", "--questions", "1", "--repeats", "1", "--warmup", "1", "--max-new-tokens", "4",
         "--json", str(out)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not os.path.exists(str(out) + ".tmp")
    with open(out) as fh:
        return proc.stdout, json.load(fh)


def test_cli_prints_the_table_and_writes_valid_json(cli_run):
    stdout, payload = cli_run
    assert "prefill ms" in stdout and "generate ms" in stdout and "speed-up" in stdout and "GFLOPs" in stdout
    assert "memory: cpu: process" in stdout  # says which memory figure it is
    settings = payload["settings"]
    assert settings["model"] == "tiny-llava" and settings["dtype"] == "float32" and settings["device"] == "cpu"
    assert settings["repeats"] == 1 and settings["torch"] == torch.__version__ and settings["transformers"]
    assert settings["methods"] == ["none", "eadp", "pool"] and settings["budgets"] == [128, 64]
    rows = payload["rows"]
    assert [(r["method"], r["budget"]) for r in rows] == [("none", None), ("eadp", 128), ("eadp", 64),
                                                         ("pool", 128), ("pool", 64)]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["prefill_ms"] > 0 and r["generate_ms"] > 0 and r["peak_memory_mib"] > 0
        assert r["new_tokens"] == 4
        assert r["prefill_model_ms"] == pytest.approx(r["prefill_ms"] - r["overhead_ms"])
        line = next(line for line in stdout.splitlines() if line.split()[:2] == [r["method"], str(r["budget"] or "-")])
        assert f"{r['prefill_ms']:.2f}" in line and f"{r['flops_ratio']:.3f}" in line


def test_rows_count_the_tokens_fed_and_match_the_analytic_flops_and_kv(cli_run):
    _, payload = cli_run
    config = eff.tiny_llava().config
    rows = payload["rows"]
    none = rows[0]
    assert none["visual_tokens"] == none["visual_tokens_before"] == 576
    assert none["overhead_ms"] == 0 and none["flops_ratio"] == 1 and none["prefill_speedup"] == 1
    for r in rows:
        (sample,) = r["samples"]
        if r["method"] != "none":
            assert r["visual_tokens"] == r["budget"] and r["overhead_ms"] > 0
            assert r["sequence"] == none["sequence"] - (576 - r["budget"])
        assert r["text_tokens"] == none["text_tokens"] == r["sequence"] - r["visual_tokens"]
        assert r["prefill_flops"] == prefill_flops(config, r["visual_tokens"], r["text_tokens"])
        assert r["kv_cache_bytes"] == r["kv_cache_bytes_analytic"] == kv_cache_bytes(config, r["sequence"],
                                                                                        dtype_bytes=4)
        assert r["kv_cache_match"] is True and sample["kv_cache_bytes"] == r["kv_cache_bytes"]
        assert r["flops_ratio"] == pytest.approx(r["prefill_flops"] / none["prefill_flops"])
    for method in ("eadp", "pool"):
        big, small = (r for r in rows if r["method"] == method)
        assert big["prefill_flops"] > small["prefill_flops"] and big["kv_cache_bytes"] > small["kv_cache_bytes"]
        assert none["prefill_flops"] > big["prefill_flops"]


def test_bad_arguments_are_refused_before_loading():
    with pytest.raises(ValueError, match="methods"):
        eff.check_arguments("eadp,nope", "64")
    with pytest.raises(ValueError, match="budgets"):
        eff.check_arguments("eadp", "64,0")
    with pytest.raises(ValueError, match="budgets"):
        eff.check_arguments("eadp", "sixty")
    with pytest.raises(ValueError, match="dtype"):
        eff.check_arguments("eadp", "64", dtype="float8")
    with pytest.raises(ValueError, match="device"):
        eff.check_arguments("eadp", "64", device="tpu")
    with pytest.raises(ValueError, match="repeats"):
        eff.check_arguments("eadp", "64", repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        eff.check_arguments("eadp", "64", warmup=-1)
    with pytest.raises(ValueError, match="clip"):
        eff.check_arguments("eadp", "64", scoring="clip")
    with pytest.raises(ValueError, match="methods"):
        eff.run("tiny-llava", "eadp,nope", "64")
    assert eff.check_arguments("pool,none,pool", "64,64,8") == (["none", "pool"], [64, 8])


@pytest.mark.parametrize("flag, value, word", [("--methods", "eadp,nope", "methods"), ("--budgets", "0", "budgets"),
                                               ("--dtype", "float8", "dtype")])
def test_cli_bad_arguments_exit_with_a_clear_message(capsys, flag, value, word):
    with pytest.raises(SystemExit) as exc:
        eff.main(["--model", "tiny-llava", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert word in err and value.split(",")[-1] in err


def test_cache_bytes_and_placeholders():
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(3):
        cache.update(torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8), layer)
    assert eff.cache_bytes(cache) == 3 * 2 * (2 * 5 * 8) * 4
    assert eff.cache_bytes(((torch.zeros(4, dtype=torch.float16), torch.zeros(4, dtype=torch.float16)),)) == 16
    config = eff.tiny_llava().config
    ids = torch.tensor([[1, 3] + [config.image_token_id] * 7 + [5, 4]])
    assert eff.placeholder_count(config, ids) == 7


def test_add_ratios_needs_none():
    with pytest.raises(ValueError, match="rows"):
        eff.add_ratios([dict(method="pool", prefill_ms=1.0, prefill_model_ms=1.0, generate_ms=1.0, prefill_flops=1)])


@pytest.mark.parametrize("family", sorted(tiny_vlms.BUILDERS))
def test_handmade_samples_fit_every_family(family):
    model = tiny_vlms.BUILDERS[family]()
    sample = eff.handmade_sample(model, seed=3, question_tokens=5)
    assert sample["input_ids"].shape == sample["attention_mask"].shape
    config = model.config
    n = eff.placeholder_count(config, sample["input_ids"])
    assert n > 0 and sample["input_ids"].shape[1] == n + 5 + 2 + (3 if family in tiny_vlms.QWEN else 1)
    with torch.no_grad():
        model(**sample)  # the placeholder count matches the features
        row = eff.measure_configuration(model, [sample], "pool", 4, repeats=1, warmup=0, max_new_tokens=2)
    assert row["kv_cache_match"] and row["visual_tokens"] < n


def test_local_folder_with_processor(tmp_path):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tiny_vlms.llava().save_pretrained(tmp_path)
    LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 24},
                                                         crop_size={"height": 24, "width": 24}),
                   tokenizer=tiny_vlms.tokenizer(), patch_size=4, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(tmp_path)
    result = eff.run(str(tmp_path), "eadp", "8", questions=2, repeats=1, warmup=0, max_new_tokens=2, progress=False)
    assert result["settings"]["inputs"] == "processor"
    assert result["settings"]["model_class"] == "LlavaForConditionalGeneration"
    none, pruned = result["rows"]
    assert none["visual_tokens"] == 36 and pruned["visual_tokens"] == 8
    assert all(s["kv_cache_bytes"] == s["kv_cache_bytes_analytic"] for r in result["rows"] for s in r["samples"])
    assert "visual" in eff.format_table(result)


def test_load_model_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="model"):
        eff.load_model(str(tmp_path))  # a folder without config.json


def test_synthetic_image_is_seeded():
    a, b, c = eff.synthetic_image(12, 20, 1), eff.synthetic_image(12, 20, 1), eff.synthetic_image(12, 20, 2)
    assert a.size == (20, 12) and a.tobytes() == b.tobytes() != c.tobytes()


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "x.json"
    eff.write_json(path, {"rows": [1]})
    eff.write_json(path, {"rows": [2]})
    assert json.loads(path.read_text()) == {"rows": [2]} and os.listdir(tmp_path) == ["x.json"]


def test_module_does_not_import_plotting():
    code = "import sys, eadp_lab.bench.efficiency; print('matplotlib' in sys.modules, 'seaborn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True).stdout
    assert out.split() == ["False", "False"]


ROWS = [dict(method="none", budget=None, visual_tokens=576, prefill_ms=10.0, prefill_gflops=5.0),
        dict(method="pool", budget=64, visual_tokens=64, prefill_ms=2.0, prefill_gflops=0.6),
        dict(method="pool", budget=192, visual_tokens=192, prefill_ms=4.0, prefill_gflops=1.5)]


def test_plot_efficiency_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="matplotlib"):
        eff.plot_efficiency(ROWS)


def test_plot_efficiency_draws_time_and_flops_per_method(monkeypatch, tmp_path):
    from unittest import mock

    axes = (mock.MagicMock(name="time"), mock.MagicMock(name="flops"))
    pyplot = types.SimpleNamespace(subplots=mock.MagicMock(return_value=(mock.MagicMock(), axes)))
    monkeypatch.setitem(sys.modules, "matplotlib", types.SimpleNamespace(pyplot=pyplot))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    monkeypatch.setitem(sys.modules, "seaborn", None)
    path = tmp_path / "rows.json"
    eff.write_json(path, {"rows": ROWS})
    ax_time, ax_flops = eff.plot_efficiency(str(path))
    (x, y, *_), _ = ax_time.plot.call_args_list[0]
    assert x == [64, 192] and y == [2.0, 4.0]  # sorted by kept tokens
    (x, y, *_), _ = ax_flops.plot.call_args_list[0]
    assert y == [0.6, 1.5]
    twin = mock.MagicMock(name="ax")
    assert eff.plot_efficiency(ROWS, ax=twin) == (twin, twin.twinx.return_value)
    with pytest.raises(ValueError, match="rows_or_json_path"):
        eff.plot_efficiency([])


def test_bench_registry_runs_flops_and_refuses_unknown_names(capsys):
    from eadp_lab.bench import COMMANDS, main

    assert {"select", "efficiency", "flops"} <= set(COMMANDS)
    assert main(["flops"]) == 0
    out = capsys.readouterr().out
    assert "llava-hf__llava-1.5-7b-hf" in out and "prefill TFLOPs" in out
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err


# ---------------------------------------------------------------- the command's --json and --seed, before any work

FAKE_RESULT = {"settings": {"model": "fake"}, "rows": [{"method": "none"}]}


@pytest.fixture
def no_model(monkeypatch):
    """The bench's model loader fails the test if it is reached; ``run`` is never reached either."""
    monkeypatch.setattr(eff, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(eff, "run", lambda *a, **k: pytest.fail("the bench ran"))


@pytest.mark.parametrize("argv, message", [(["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
                                           (["--seed", "x"], "argument --seed: must be an integer >= 0, got 'x'")])
def test_cli_refuses_a_negative_seed_before_loading(capsys, no_model, argv, message):
    with pytest.raises(SystemExit) as exc:
        eff.main(["--model", "tiny-llava", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_checks_the_json_path_before_loading(tmp_path, capsys, no_model):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (tmp_path, blocker / "out.json"):  # a folder; under a file
        with pytest.raises(SystemExit) as exc:
            eff.main(["--model", "tiny-llava", "--json", str(out)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and str(out) in err and "--json" in err


def test_cli_makes_the_json_folder_before_the_run_and_writes_through_io(tmp_path, capsys, monkeypatch):
    out = tmp_path / "missing" / "dir" / "out.json"

    def fake_run(*args, **kwargs):
        assert out.parent.is_dir()  # checked (made) before any work
        return FAKE_RESULT

    monkeypatch.setattr(eff, "run", fake_run)
    monkeypatch.setattr(eff, "format_table", lambda result: "table")
    assert eff.main(["--model", "tiny-llava", "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == FAKE_RESULT and os.listdir(out.parent) == ["out.json"]
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_a_failed_final_write_says_where_the_results_are(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    import eadp_lab._io as io

    out = tmp_path / "out.json"
    monkeypatch.setattr(eff, "run", lambda *a, **k: FAKE_RESULT)
    monkeypatch.setattr(eff, "format_table", lambda result: "table")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_json", full_disk)  # the write at the end fails (the path was fine before)
    assert eff.main(["--model", "tiny-llava", "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "No space left" in err
    fallback = err.rsplit(" ", 1)[-1]
    try:
        assert json.loads(Path(fallback).read_text()) == FAKE_RESULT and not out.exists()
    finally:
        os.unlink(fallback)


def test_rounds_merge_and_speed_ups_carry_their_spread():
    """Interleaved rounds pool into one row; each speed-up is read with the spread of single calls
    against the unpruned call of the same sample and round."""
    def row(method, prefill, overhead=0.0):
        return dict(method=method, budget=None, prefill_ms_all=prefill, generate_ms_all=[2 * t for t in prefill],
                    overhead_ms_all=[overhead] * len(prefill), hook_forward_ms=overhead, peak_memory_mib=1.0,
                    peak_memory_delta_mib=0.5, prefill_flops=100 if method == "none" else 40)

    none = eff.merge_rounds([row("none", [10.0, 12.0]), row("none", [20.0, 11.0])])
    pruned = eff.merge_rounds([row("pool", [5.0, 6.0], 1.0), row("pool", [10.0, 11.0], 1.0)])
    assert none["prefill_ms_all"] == [10.0, 12.0, 20.0, 11.0] and none["prefill_ms"] == 11.5
    assert pruned["prefill_ms"] == 8.0 and pruned["prefill_model_ms"] == 7.0 and pruned["generate_ms"] == 16.0
    eff.add_ratios([none, pruned])
    assert pruned["prefill_speedup"] == 11.5 / 8.0
    assert pruned["prefill_speedup_low"] == 1.0 and pruned["prefill_speedup_high"] == 2.0  # 11/11 and 10/5, 12/6, 20/10
    assert none["prefill_speedup_low"] == none["prefill_speedup_high"] == 1.0
    assert "[1.00-2.00]" in eff._spread(pruned)
    with pytest.raises(ValueError, match="no rounds"):
        eff.merge_rounds([])
