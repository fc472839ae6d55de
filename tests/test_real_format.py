"""Tiny checkpoints in the real on-disk formats (llava-1.5, llava-v1.6, Qwen2.5-VL, Qwen3-VL): what a user
with the real checkpoints runs (loading, the processor, `Lab`, both benches, chapters 00 and
04), run here on CPU on :mod:`eadp_lab.bench.tiny_checkpoints`."""

import json
from pathlib import Path

import pytest
import torch

from eadp_lab.bench import accuracy, efficiency
from eadp_lab.bench.tiny_checkpoints import FORMATS, build_all
from eadp_lab.evaluation import file_questions, load

ROOT = Path(__file__).resolve().parents[1]
SPECIAL_IDS = {"llava-1.5": {"<image>": 32000, "<pad>": 32001, "<s>": 1, "</s>": 2},
               "llava-v1.6": {"<image>": 32000, "<pad>": 32001, "<s>": 1, "</s>": 2},
               "qwen2.5-vl": {"<|image_pad|>": 151655, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
                              "<|im_start|>": 151644, "<|im_end|>": 151645, "<|endoftext|>": 151643}}
SPECIAL_IDS["qwen3-vl"] = dict(SPECIAL_IDS["qwen2.5-vl"], **{"<|video_pad|>": 151656})
CLASSES = {"llava-1.5": "LlavaForConditionalGeneration", "llava-v1.6": "LlavaNextForConditionalGeneration",
           "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration", "qwen3-vl": "Qwen3VLForConditionalGeneration"}
QWEN_FORMATS = ("qwen2.5-vl", "qwen3-vl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("tiny-checkpoints"), questions=6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_on_disk_format(tiny, fmt):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    folder = tiny[fmt]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2, "stored sharded, as on the hub"
    for shard in shards:
        with safe_open(folder / shard, "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [CLASSES[fmt]]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_IDS[fmt])) == list(SPECIAL_IDS[fmt].values())
    declared = json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert declared == ("Qwen2Tokenizer" if fmt in QWEN_FORMATS else "LlamaTokenizer")
    text = "what colour is the small red circle ?"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    if fmt == "qwen2.5-vl":
        assert config["image_token_id"] == 151655 and config["text_config"]["vocab_size"] == 152064
        assert tokenizer.padding_side == "right"  # as the real one: load() must switch it
    elif fmt == "qwen3-vl":  # Qwen/Qwen3-VL-8B-Instruct's layout and files
        assert config["model_type"] == "qwen3_vl" and config["image_token_id"] == 151655
        assert config["text_config"]["vocab_size"] == 151936 and config["text_config"]["model_type"] == "qwen3_vl_text"
        vision = config["vision_config"]
        assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"],
                vision["num_position_embeddings"]) == (16, 2, 2, 2304)
        assert vision["deepstack_visual_indexes"] and config["tie_word_embeddings"] is False
        image = json.loads((folder / "preprocessor_config.json").read_text())
        video = json.loads((folder / "video_preprocessor_config.json").read_text())
        assert image["processor_class"] == video["processor_class"] == "Qwen3VLProcessor"
        assert image["patch_size"] == video["patch_size"] == 16 and image["image_mean"] == [0.5, 0.5, 0.5]
        assert video["video_processor_type"] == "Qwen3VLVideoProcessor"
        template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
        assert "<|vision_start|><|image_pad|><|vision_end|>" in template and "<|video_pad|>" in template
        assert tokenizer.padding_side == "right"
    else:
        assert config["image_token_index"] == 32000 and config["text_config"]["vocab_size"] == 32064
        assert config["vision_config"]["image_size"] == 336 and config["vision_config"]["patch_size"] == 14


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_gives_a_left_padding_processor_that_matches_the_model(tiny, fmt):
    model, processor, _, _ = load(tiny[fmt], None)
    assert processor.tokenizer.padding_side == "left"
    questions = file_questions(tiny["questions"], tiny["images"], limit=2)
    from eadp_lab.evaluation import prompt_for

    inputs = processor(images=[q.image for q in questions], text=[prompt_for(processor, q.text) for q in questions],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        model(**inputs)  # the placeholder count matches the vision features
    assert (inputs["attention_mask"][:, -1] == 1).all(), "left padding: every row ends with a real token"


@pytest.mark.parametrize("fmt", QWEN_FORMATS)
def test_qwen_lab_facade(tiny, fmt):
    from eadp_lab.lab import Lab

    model, processor, _, _ = load(tiny[fmt], None)
    lab = Lab(model, processor, name="tiny-qwen")
    image = file_questions(tiny["questions"], tiny["images"], limit=1)[0].image
    grid_thw = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    n = int(grid_thw.prod()) // 4  # 2x2 merge
    assert lab.num_visual_tokens == n  # the questions' images are 96 px, the size Lab.grid reports
    assert "tiny-qwen" in repr(lab)
    answer = lab.ask(image, "what colour is the circle ?", method="none", max_new_tokens=2)
    assert isinstance(answer.text, str)
    kept = lab.keep(image, "what colour is the circle ?", method="eadp", budget=4)
    assert int(kept.keep_mask.sum()) == 4 and kept.keep_mask.shape[-1] == n
    assert lab.keep(image, "what colour is the circle ?", method="eadp", budget=None).keep_mask.all()


@pytest.mark.parametrize("fmt", QWEN_FORMATS)
def test_qwen_explorer_describes_the_field_methods_it_takes(tiny, fmt):
    """Chapter 06's field panel on Qwen: VisionZip refused by name (no [CLS]), HiPrune's caption from
    its Qwen settings (the last ViT block; Qwen's config has no vision_feature_layer)."""
    from eadp_lab.explorer import Explorer
    from eadp_lab.lab import Lab
    from eadp_lab.methods.settings import FIELD_METHODS
    from eadp_lab.world import sample

    model, processor, _, _ = load(tiny[fmt], None)
    lab = Lab(model, processor, name="tiny-qwen")
    runs, refused = lab.applicable(FIELD_METHODS, 8)
    assert "visionzip" in refused and "hiprune" in runs
    explorer = Explorer(lab, sample("heldout", 1, seed=1, grid=lab.grid), method="hiprune", budget=8)
    assert explorer.error is None and "last block" in explorer.caption.value
    assert int(explorer.keep.sum()) == 8


@pytest.mark.parametrize("fmt", FORMATS)
def test_accuracy_bench_answers_by_question_id(tiny, fmt, tmp_path):
    answers = tmp_path / "answers.jsonl"
    clip = ["--clip", str(tiny["clip"])] if fmt == "llava-1.5" else ["--scoring", "llm"]
    args = ["--model", str(tiny[fmt]), *clip, "--question-file", str(tiny["questions"]), "--image-folder",
            str(tiny["images"]), "--questions", "4", "--budgets", "8", "--methods", "none,eadp,divprune",
            "--batch", "2", "--max-new-tokens", "3", "--dtype", "float16", "--answers-file", str(answers),
            "--json", str(tmp_path / "out.json")]
    assert accuracy.main(args) == 0
    asked = [json.loads(line)["question_id"] for line in tiny["questions"].read_text().splitlines()][:4]
    files = sorted(tmp_path.glob("answers-*.jsonl"))
    assert len(files) == 3  # none at the full count, eadp and divprune at 8
    for path in files:
        by_id = {json.loads(line)["question_id"]: json.loads(line) for line in path.read_text().splitlines()}
        assert all(isinstance(q, int) for q in by_id) and sorted(by_id) == asked  # as LLaVA's scripts look them up
        assert all(a["answer_id"] and "text" in a and "prompt" in a for a in by_id.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_efficiency_bench(tiny, fmt):
    result = efficiency.run(str(tiny[fmt]), "none,eadp", "8", questions=1, repeats=1, warmup=0, max_new_tokens=2,
                            progress=False)
    assert result["settings"]["model_class"] == CLASSES[fmt]
    none, pruned = result["rows"]
    assert pruned["visual_tokens"] < none["visual_tokens"]
    assert all(s["kv_cache_bytes"] == s["kv_cache_bytes_analytic"] for r in result["rows"] for s in r["samples"])


@pytest.mark.book  # papermill and a kernel: the book's environment (make book runs it)
@pytest.mark.parametrize("chapter", ["00_tour", "04_full_model_benchmarks"])
def test_chapters_run_on_a_real_format_checkpoint(tiny, chapter, tmp_path):
    import papermill

    params = {"model": str(tiny["llava-1.5"]), "clip": str(tiny["clip"])}
    if chapter.startswith("04"):
        params.update(question_file=str(tiny["questions"]), image_folder=str(tiny["images"]), questions=4,
                      batch=2, efficiency_samples=1, efficiency_repeats=1)
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(tmp_path / f"{chapter}.ipynb"),
                               parameters=params, cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")


# make gpu-check's chapters on a Qwen checkpoint (no [CLS], a byte-level BPE tokenizer, its own token grid), at a
# few questions each: what a method or an analysis cannot do on it is said in the output, the rest runs.
QWEN_CHAPTERS = {"00_tour": {}, "01_motivation_failures": {"n_questions": 16, "n_accuracy": 4},
                 "02_entropy_analysis": {"n_questions": 12, "n_accuracy": 4}, "06_explorer": {"n_reliability": 4}}


@pytest.mark.book
@pytest.mark.parametrize("chapter", list(QWEN_CHAPTERS))
def test_chapters_run_on_a_real_format_qwen_checkpoint(tiny, chapter, tmp_path):
    import papermill

    params = {"model": str(tiny["qwen3-vl"]), "clip": None, "device": "cpu", "dtype": "float32",
              **QWEN_CHAPTERS[chapter]}
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{chapter}.ipynb"), str(tmp_path / f"{chapter}.ipynb"),
                               parameters=params, cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")


def test_gpu_check_plan_makes_local_paths_absolute(tmp_path, monkeypatch):
    """The chapters execute in notebooks/: a relative local model folder must reach them absolute,
    while a hub id passes unchanged (a relative path once failed every chapter with HFValidationError)."""
    import argparse

    from eadp_lab.gpu_check import plan

    (tmp_path / "models" / "llava").mkdir(parents=True)
    (tmp_path / "q.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(device="cuda", out="runs", model="models/llava", clip="openai/clip-vit-large-patch14-336",
                              question_file="q.jsonl", image_folder=None, dtype=None, questions=8)
    setup = plan(args)
    assert setup["model"] == str(tmp_path / "models" / "llava")
    assert setup["question_file"] == str(tmp_path / "q.jsonl")
    assert setup["clip"] == "openai/clip-vit-large-patch14-336" and setup["image_folder"] is None
    assert setup["dtype"] == "float16" and not setup["tiny"]
