"""The lmms-eval model (``--model eadp_lab``) and its local task.

The unit tests run in the project's environment (``--model_args`` checks, the task writer,
the request helpers), without lmms-eval. The runs marked slow go through lmms-eval's own
command line in ``.venv-lmms`` (``make venv-lmms``; ``make test`` builds it and points
``EADP_LMMS_PYTHON`` at it, so there a missing environment fails instead of skipping): the tiny
real-format checkpoints with ``none`` and ``eadp``, and the lab LLaVA, whose answers through
lmms-eval must equal ``bench accuracy``'s on the same question file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eadp_lab.config import EADPConfig
from eadp_lab.evaluation import ModelLoadError, QuestionFileError
from eadp_lab.harness import harness_args
from eadp_lab.harness.requests import batches, generate_kwargs, output_folder, records_path, until_cut
from eadp_lab.harness.summary import read_run, summary_frame
from eadp_lab.harness.task import doc_to_text, process_results, write_task
from eadp_lab.paths import MODELS

ROOT = Path(__file__).resolve().parents[1]
LAB_LLAVA, LAB_CLIP = MODELS / "lab-llava", MODELS / "lab-clip"


# --- --model_args, checked before any model loads -------------------------------------------------------------

def test_model_args_resolve_the_family_preset_and_overrides():
    args = harness_args(pretrained=str(LAB_LLAVA), method="eadp", budget=28, clip=str(LAB_CLIP), alpha=0.3)
    assert (args.family, args.registry_method, args.scoring, args.budget) == ("llava", "eadp", "clip", 28)
    assert isinstance(args.settings, EADPConfig) and args.settings.alpha == 0.3
    preset = harness_args(pretrained=str(LAB_LLAVA), method="eadp", preset="llava-video")
    assert preset.scoring == "llm" and preset.settings.aggregation == "entropy_tempered"
    ablation = harness_args(pretrained=str(LAB_LLAVA), method="eadp-topk", budget=0.25)
    assert (ablation.registry_method, ablation.settings.selection, ablation.budget) == ("eadp", "topk", 0.25)
    assert harness_args(pretrained=str(LAB_LLAVA), method="divprune").registry_method == "divprune"


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "eadpp"}, "method='eadpp' is not a pruning method"),
    ({"budget": 0}, "budget"),
    ({"budget": 64.0}, "budget"),
    ({"scoring": "clip"}, "scoring=clip needs clip="),
    ({"positions": "kept"}, "positions"),
    ({"dtype": "float8"}, "dtype"),
    ({"batch_size": "auto"}, "batch_size"),
])
def test_bad_model_args_are_named_before_the_checkpoint_is_read(kwargs, message):
    """These are checked before the checkpoint's config: here pretrained names no folder at all."""
    with pytest.raises(ValueError, match=message):
        harness_args(pretrained="/nowhere/at/all", **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "eadp", "alhpa": 0.3}, "alhpa"),
    ({"method": "eadp", "alpha": 7.0}, "alpha"),
    ({"method": "divprune", "preset": "llava-1.5"}, "preset='llava-1.5' names an EADP preset"),
    ({"method": "eadp", "preset": "llava-2"}, "llava-2"),
    ({"method": "hiprune", "score_order": "raster"}, "score_order"),  # a field of the Qwen variant only
])
def test_bad_settings_are_named_from_the_config_alone(kwargs, message, monkeypatch):
    """Settings depend on the model class (its config.json), never on its weights: loading them fails here."""
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", no_weights)
    with pytest.raises(ValueError, match=message):
        harness_args(pretrained=str(LAB_LLAVA), **kwargs)


def test_a_model_class_attach_does_not_support_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Blip2ForConditionalGeneration"]}))
    with pytest.raises(ValueError, match="model class Blip2ForConditionalGeneration .* is not supported by "
                                         "eadp_lab.attach; supported: .*LlavaForConditionalGeneration"):
        harness_args(pretrained=str(tmp_path), method="eadp")


def test_a_checkpoint_without_a_config_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        harness_args(pretrained=str(tmp_path))
    with pytest.raises(ModelLoadError, match="not a folder here"):
        harness_args(pretrained="no-such-org/no-such-model")


# --- the local task ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    from eadp_lab.bench.tiny_checkpoints import question_file

    return question_file(tmp_path_factory.mktemp("questions"), n=6, seed=0)


def _task_yaml(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    return yaml.load(path.read_text(), Loader=Loader)


def test_write_task_writes_a_generate_until_task_over_the_question_file(questions, tmp_path):
    qfile, images = questions
    task = write_task(qfile, images, tmp_path / "tasks", name="lab_qa", max_new_tokens=3)
    spec = _task_yaml(task)
    assert spec["task"] == "lab_qa" and spec["output_type"] == "generate_until"
    assert spec["doc_to_visual"] == "!function utils.doc_to_visual"
    assert spec["generation_kwargs"]["max_new_tokens"] == 3
    data = Path(spec["dataset_kwargs"]["data_files"]["test"])
    docs = [json.loads(line) for line in data.read_text().splitlines()]
    source = [json.loads(line) for line in qfile.read_text().splitlines()]
    assert [d["question_id"] for d in docs] == [s["question_id"] for s in source]
    assert all(Path(d["image"]).is_absolute() and Path(d["image"]).is_file() for d in docs)
    assert [d["answer"] for d in docs] == [s["answer"] for s in source]
    assert "from eadp_lab.harness.task import" in (task.parent / "utils.py").read_text()


def test_write_task_refuses_a_missing_image_and_writes_nothing(questions, tmp_path):
    qfile, images = questions
    lines = qfile.read_text().splitlines()
    bad = tmp_path / "q.jsonl"
    bad.write_text("\n".join(lines[:2] + [lines[2].replace('.png"', '-gone.png"')]) + "\n")
    with pytest.raises(QuestionFileError, match=r"q.jsonl:3: image .*-gone.png.* not found"):
        write_task(bad, images, tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()


def test_the_task_scores_the_first_word_as_bench_accuracy_does():
    doc = {"text": "what colour is it ?", "answer": "Red"}
    assert process_results(doc, ["red, I think."]) == {"exact_match": 1.0}
    assert process_results(doc, ["It is red"]) == {"exact_match": 0.0}
    assert doc_to_text(doc, {"post_prompt": "\nAnswer briefly."}) == "what colour is it ?\nAnswer briefly."


# --- what the model does with requests ---------------------------------------------------------------------------

def test_batches_keep_order_and_never_mix_generation_kwargs():
    greedy, longer = {"max_new_tokens": 3}, {"max_new_tokens": 9}
    assert batches([greedy, greedy, greedy, longer, greedy], 2) == [[0, 1], [2], [3], [4]]
    assert batches([greedy] * 3, 1) == [[0], [1], [2]]


def test_generation_kwargs_and_stop_strings():
    kwargs, until = generate_kwargs({"until": "\n\n", "max_new_tokens": 16, "temperature": 0, "do_sample": True})
    assert kwargs == {"max_new_tokens": 16, "do_sample": False, "num_beams": 1} and until == ["\n\n"]
    kwargs, _ = generate_kwargs({"temperature": 0.7, "do_sample": True, "top_p": 0.9})
    assert kwargs["do_sample"] and kwargs["temperature"] == 0.7 and kwargs["max_new_tokens"] == 128
    assert until_cut("yes\n\nUSER: more", ["\n\n", "USER:"]) == "yes"


def test_records_go_beside_lmms_evals_output(tmp_path):
    assert output_folder(["--model", "x", "--output_path", "runs/out"]) == Path("runs/out")
    assert output_folder(["--output_path=runs/out/results.json"]) == Path("runs/out")
    assert output_folder(["--model", "x"]) is None
    path = records_path(None, "eadp", 64, ["--output_path", str(tmp_path)])
    assert path.parent == tmp_path and path.name.startswith("eadp_lab_eadp_64_") and path.suffix == ".jsonl"
    assert records_path("mine.jsonl", "eadp", 64, []) == Path("mine.jsonl")


def _fake_run(folder: Path, method: str, budget: int, scores: dict, kept: list[int]) -> Path:
    """A run's folder as lmms-eval and the model write it: results JSON and a records file."""
    (folder / "model").mkdir(parents=True)
    results = {task: {"alias": task, f"{metric},none": value, f"{metric}_stderr,none": 0.1}
               for (task, metric), value in scores.items()}
    (folder / "model" / "20261207_000000_results.json").write_text(json.dumps({
        "results": results, "config": {"model": "eadp_lab", "model_args": f"pretrained=m,method={method},budget={budget}"}}))
    (folder / f"eadp_lab_{method}_{budget}_x.jsonl").write_text("".join(
        json.dumps({"method": method, "budget": budget, "tokens_before": 576, "tokens_after": k,
                    "pruning_seconds": 0.002}) + "\n" for k in kept))
    return folder


def test_the_summary_sets_each_score_beside_the_unpruned_runs(tmp_path):
    none = read_run(_fake_run(tmp_path / "none", "none", 64, {("pope", "pope_f1_score"): 0.8,
                                                             ("gqa", "exact_match"): 0.6}, [576, 576]))
    eadp = read_run(_fake_run(tmp_path / "eadp", "eadp", 64, {("pope", "pope_f1_score"): 0.6,
                                                             ("gqa", "exact_match"): 0.3}, [64, 62]))
    scores, costs = summary_frame([none, eadp])
    assert scores.loc[("pope", "pope_f1_score"), "eadp 64 / none"] == pytest.approx(0.75)
    assert scores.loc[("gqa", "exact_match"), "eadp 64 / none"] == pytest.approx(0.5)
    assert "exact_match_stderr" not in scores.index.get_level_values("metric")
    assert costs.loc["eadp 64", "tokens_after"] == 63 and costs.loc["eadp 64", "pruning_ms"] == pytest.approx(2)
    with pytest.raises(ValueError, match="no lmms-eval results"):
        read_run(tmp_path)
    with pytest.raises(ValueError, match="same method and budget"):
        summary_frame([eadp, eadp])


# --- lmms-eval's own command line, in .venv-lmms -----------------------------------------------------------------

def _lmms_python() -> str:
    given = os.environ.get("EADP_LMMS_PYTHON")
    python = Path(given or ROOT / ".venv-lmms" / "bin" / "python")
    if not python.exists():
        message = f"no lmms-eval environment at {python}: `make venv-lmms` builds it"
        if given:
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


def lmms_eval(model_args: str, tasks: Path, out: Path, max_new_tokens: int = 3, task="eadp_lab_qa") -> tuple[str, dict]:
    """Run ``python -m lmms_eval --model eadp_lab`` (lmms-eval exits 0 even when a run fails, so the caller
    reads what it wrote); ``(its output, the files it wrote by kind)``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf"),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [_lmms_python(), "-m", "lmms_eval", "--model", "eadp_lab", "--model_args", model_args,
           "--tasks", task, "--include_path", str(tasks), "--batch_size", "1", "--output_path", str(out / "out"),
           "--log_samples", "--gen_kwargs", f"max_new_tokens={max_new_tokens}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    log = run.stdout + run.stderr
    files = {"results": sorted((out / "out").glob("*/*_results.json")),
             "samples": sorted((out / "out").glob(f"*/*_samples_{task}.jsonl")),
             "records": sorted((out / "out").glob("eadp_lab_*.jsonl"))}
    return log, files


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, questions):
    from eadp_lab.bench.tiny_checkpoints import FORMATS, build

    out = tmp_path_factory.mktemp("tiny")
    qfile, images = questions
    paths = {fmt: build(fmt, out / fmt) for fmt in FORMATS if fmt != "llava-v1.6"}
    paths["clip"] = out / "clip"
    paths["tasks"] = write_task(qfile, images, out / "tasks").parent
    paths["questions"] = len(qfile.read_text().splitlines())
    return paths


TINY_RUNS = [("llava-1.5", "none", ""), ("llava-1.5", "eadp", ",clip={clip}"), ("qwen2.5-vl", "none", ""),
             ("qwen2.5-vl", "eadp", ""), ("qwen3-vl", "none", ""), ("qwen3-vl", "eadp", "")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt, method, extra", TINY_RUNS, ids=[f"{f}-{m}" for f, m, _ in TINY_RUNS])
def test_lmms_eval_runs_the_tiny_real_format_checkpoints(tiny, tmp_path, fmt, method, extra):
    if fmt not in tiny:
        pytest.fail(f"no tiny {fmt} checkpoint: eadp_lab.bench.tiny_checkpoints.FORMATS lacks it")
    budget = 8
    log, files = lmms_eval(f"pretrained={tiny[fmt]},method={method},budget={budget}" + extra.format(**tiny),
                           tiny["tasks"], tmp_path)
    assert files["results"] and files["samples"], log[-3000:]
    results = json.loads(files["results"][0].read_text())["results"]["eadp_lab_qa"]
    assert 0.0 <= results["exact_match,none"] <= 1.0
    assert len(_jsonl(files["samples"][0])) == tiny["questions"]
    (records,) = files["records"]
    assert str(records.name) in log  # the log names the records file
    lines = _jsonl(records)
    assert [r["doc_id"] for r in lines] == list(range(tiny["questions"]))
    for r in lines:
        assert r["task"] == "eadp_lab_qa" and r["method"] == method and r["pruning_seconds"] >= 0
        assert r["tokens_after"] == (r["tokens_before"] if method == "none" else budget)
        assert r["tokens_before"] > budget
    run = json.loads(Path(f"{records}.run.json").read_text())
    assert run["method"] == method and run["budget"] == budget


@pytest.mark.slow
def test_lmms_eval_answers_as_bench_accuracy_does_on_the_lab_llava(tiny, questions, tmp_path):
    """The same questions, prompts and greedy decoding through lmms-eval and through ``bench accuracy``: the
    same answers, the same accuracy, with every token and with EADP at 28 of 256 tokens."""
    qfile, images = questions
    bench = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "eadp_lab", "bench", "accuracy", "--question-file", str(qfile),
                    "--image-folder", str(images), "--methods", "none,eadp", "--budgets", "28", "--batch", "1",
                    "--max-new-tokens", "3", "--answers-file", str(bench / "A.jsonl"), "--json",
                    str(bench / "acc.json")], check=True, capture_output=True, timeout=600, cwd=ROOT)
    accuracy = {r["method"]: r["accuracy"] for r in json.loads((bench / "acc.json").read_text())["results"]}
    for method, budget in (("none", 256), ("eadp", 28)):
        log, files = lmms_eval(f"pretrained={LAB_LLAVA},method={method},budget=28,clip={LAB_CLIP}", tiny["tasks"],
                               tmp_path / method)
        assert files["samples"], log[-3000:]
        answers = {a["question_id"]: a["text"] for a in _jsonl(bench / f"A-{method}-{budget}.jsonl")}
        samples = _jsonl(files["samples"][0])
        assert {s["doc_id"]: s["filtered_resps"] for s in samples} == answers, method
        results = json.loads(files["results"][0].read_text())["results"]["eadp_lab_qa"]
        assert results["exact_match,none"] == pytest.approx(accuracy[method], abs=5e-5)  # bench rounds to 4 places
        assert {r["tokens_after"] for r in _jsonl(files["records"][0])} == {256 if method == "none" else 28}
    summary = subprocess.run([sys.executable, "-m", "eadp_lab", "lmms-summary", str(tmp_path / "none" / "out"),
                              str(tmp_path / "eadp" / "out")], capture_output=True, text=True, check=True)
    row = next(line for line in summary.stdout.splitlines() if line.startswith("eadp_lab_qa"))
    none, eadp, share = map(float, row.split()[-3:])
    assert (none, eadp) == (pytest.approx(accuracy["none"], abs=1e-4), pytest.approx(accuracy["eadp"], abs=1e-4))
    assert share == pytest.approx(accuracy["eadp"] / accuracy["none"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("model_args, message", [
    ("pretrained={llava},method=eadpp,budget=8", "method='eadpp' is not a pruning method here"),
    ("pretrained={llava},method=eadp,budget=8,alhpa=0.3", "alhpa"),
    ("pretrained={blip},method=eadp", "model class Blip2ForConditionalGeneration"),
], ids=["unknown-method", "unknown-setting", "unsupported-class"])
def test_lmms_eval_refuses_bad_model_args_before_loading_the_model(tiny, tmp_path, model_args, message):
    blip = tmp_path / "blip"
    blip.mkdir()
    (blip / "config.json").write_text(json.dumps({"architectures": ["Blip2ForConditionalGeneration"]}))
    log, files = lmms_eval(model_args.format(llava=tiny["llava-1.5"], blip=blip), tiny["tasks"], tmp_path)
    assert message in log
    assert "Loading weights" not in log and not files["records"] and not files["results"]


def test_the_book_pages_table_is_the_papers_table_1():
    """book/lmms_eval.md quotes the EADP paper's averages with their shares of the unpruned 64.9: the same
    figures as eadp_lab.field.PAPER_TABLE1, and shares computed from them."""
    import re

    from eadp_lab.field import PAPER_TABLE1, PAPER_UNPRUNED

    names = {"eadp": "EADP", "cdpruner": "CDPruner", "divprune": "DivPrune", "visionzip": "VisionZip", "dart": "DART",
             "hiprune": "HiPrune", "sparsevlm": "SparseVLM", "pyramiddrop": "PyramidDrop", "fastv": "FastV"}
    page = (ROOT / "book" / "lmms_eval.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w[\w+]*) \| (.*) \|$", page, re.M)}
    for method, name in names.items():
        cells = [c.strip() for c in rows[name].split("|")]
        for tokens, cell in zip((128, 64, 32), cells):
            value = PAPER_TABLE1[method].get(tokens)
            assert cell == ("-" if value is None else f"{value:.1f} ({100 * value / PAPER_UNPRUNED:.1f}%)"), (name, tokens)
    assert set(PAPER_TABLE1) == set(names)  # PruMerge+ and TRIM are not in it: not in the registry


MULTIPLE_CHOICE = """\
task: eadp_lab_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: ["yes", "no"]
doc_to_target: 0
metric_list:
  - metric: acc
"""


@pytest.mark.slow
def test_lmms_eval_refuses_a_loglikelihood_task_by_name(tiny, tmp_path):
    """A multiple-choice task asks for loglikelihoods, which this model does not compute: the run stops with a
    message naming the task and what to use instead, and reports no score."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text((tiny["tasks"] / "utils.py").read_text())
    (tasks / "eadp_lab_mc.yaml").write_text(MULTIPLE_CHOICE.format(data=tiny["tasks"] / "eadp_lab_qa.jsonl"))
    log, files = lmms_eval(f"pretrained={tiny['llava-1.5']},method=eadp,budget=8", tasks, tmp_path, task="eadp_lab_mc")
    assert "task(s) eadp_lab_mc ask for loglikelihoods" in log and "generate_until tasks only" in log, log[-3000:]
    assert not files["results"]


PROCESSOR_CHECK = """
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoImageProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

backend = AutoImageProcessor.from_pretrained(sys.argv[1])  # torchvision's, here
pil = Qwen2VLImageProcessorPil.from_pretrained(sys.argv[1])  # the fallback of .venv, which has no torchvision
rng = np.random.default_rng(0)
rows = []
for size in [(96, 96), (240, 320), (333, 517), (1024, 768)]:
    image = Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8))
    a, b = backend(images=[image], return_tensors="pt"), pil(images=[image], return_tensors="pt")
    gap = (a["pixel_values"] - b["pixel_values"]).abs()
    rows.append({"size": size, "backend": type(backend).__name__, "grid": a["image_grid_thw"].tolist(),
                 "pil_grid": b["image_grid_thw"].tolist(), "max": float(gap.max()), "mean": float(gap.mean())})
print(json.dumps(rows))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["qwen2.5-vl", "qwen3-vl"])
def test_the_pil_fallback_gives_the_torchvision_processors_grids(tiny, fmt):
    """.venv has no torchvision, so Qwen images go through transformers' PIL image processor; .venv-lmms has
    torchvision, whose backend the full processor uses: the same grids (so the same visual-token counts and
    budgets), pixel values within resampling rounding (a mean gap under 0.01 in normalised units)."""
    run = subprocess.run([_lmms_python(), "-c", PROCESSOR_CHECK, str(tiny[fmt])], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(r["backend"] == "Qwen2VLImageProcessor" for r in rows)  # the torchvision one, not the PIL one
    for r in rows:
        assert r["grid"] == r["pil_grid"], r
        assert r["mean"] < 0.01, r
