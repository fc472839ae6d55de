"""The accuracy bench: method names, settings, and the command end to end on the shipped lab models."""

import json

import numpy as np
import torch
import pytest

from eadp_lab import evaluation
from eadp_lab.bench import accuracy as A
from eadp_lab.config import EADPConfig




def test_ablations_map_to_eadp_overrides():
    base = A.method_settings("eadp")[1]
    assert isinstance(base, EADPConfig) and base.text_positions == "content"
    method, s = A.method_settings("eadp-global")
    assert method == "eadp" and s == base.replace(alpha=1.0)
    method, s = A.method_settings("eadp-noentropy")
    assert method == "eadp" and s == base.replace(entropy_keep_ratio=1.0, aggregation="mean")
    method, s = A.method_settings("eadp-topk")
    assert method == "eadp" and s == base.replace(selection="topk")


def test_random_draws_a_seed_per_batch_and_sign_override():
    seeds = {A.method_settings("random", batch_index=b, seed=3)[1].seed for b in range(5)}
    assert len(seeds) == 5
    assert A.method_settings("topk", sign=1.0)[1].similarity_sign == 1.0
    assert A.method_settings("eadp-global", sign=1.0)[1] == A.method_settings("eadp-global")[1].replace(
        similarity_sign=1.0)


def test_every_registry_method_and_ablation_is_known():
    from eadp_lab import METHODS

    from eadp_lab.methods.settings import FIELD_METHODS

    assert set(METHODS) | set(A.ABLATIONS) == set(A.DEFAULT_METHODS) | set(FIELD_METHODS)
    with pytest.raises(ValueError, match="method"):
        A.method_settings("nosuch")


def test_first_word():
    assert A.first_word("Yes, there is.") == "yes"
    assert A.first_word(" two </s>") == "two"
    assert A.first_word("") == ""


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        A.main(["--methods", "nosuch"])
    with pytest.raises(SystemExit):
        A.main(["--budgets", "0,14"])
    with pytest.raises(SystemExit):
        A.main(["--question-file", "x.jsonl"])
    assert "nosuch" in capsys.readouterr().err


def test_command_end_to_end(tmp_path, capsys):
    from eadp_lab.bench import main as bench_main

    out = tmp_path / "acc.json"
    code = bench_main(["accuracy", "--seed", "5", "--questions", "6", "--budgets", "14",
                       "--methods", "none,eadp,eadp-topk,random", "--batch", "3", "--json", str(out)])
    assert code == 0 and out.exists() and not (tmp_path / "acc.json.tmp").exists()
    report = json.loads(out.read_text())
    # the run says up front where its scores come from, as the report records it
    assert report["scoring"] == "clip" and report["sign"] == 1.0 and report["sign_source"] == "the CLIP's config"
    assert "scoring in the CLIP's space (data/models/lab-clip); similarity sign +1 (the CLIP's config)" \
        in capsys.readouterr().err
    rows = report["results"]
    assert [(r["method"], r["budget"]) for r in rows] == [("none", 256), ("eadp", 14), ("eadp-topk", 14), ("random", 14)]
    for r in rows:
        assert r["questions"] == 6 and 0.0 <= r["accuracy"] <= 1.0
        assert sum(t["questions"] for t in r["per_type"].values()) == 6
        # one hit per question, in their order, that the accuracy counts (for paired comparisons of runs)
        assert len(r["hits"]) == 6 and set(r["hits"]) <= set("01") and r["accuracy"] == round(r["hits"].count("1") / 6, 4)
    assert rows[0]["kept_tokens_mean"] == 256 and rows[1]["kept_tokens_mean"] == 14
    # how spread out the kept tokens lie: every token kept is a solid, evenly spaced block
    assert rows[0]["kept_nearest"] == 1.0 and rows[0]["kept_gap_cv"] == 0.0
    assert all(r["kept_nearest"] >= 1.0 and r["kept_gap_cv"] >= 0.0 for r in rows[1:])
    assert rows[1]["settings"]["text_positions"] == "content"
    assert "bench accuracy" in report["command"]
    assert report["positions"] == "renumber" and all(r["positions"] == "renumber" for r in rows)
    # The selection-level ground truth: every question that names an object is measured, and
    # with every token kept each named object is reached.
    naming = sum(bool(q.named) for q in A.lab_questions(6, seed=5))
    assert naming > 0 and all(r["named_questions"] == naming for r in rows)
    assert rows[0]["named_reached"] == 1.0 and rows[0]["named_recall"] == 1.0
    assert all(0.0 <= r["named_reached"] <= 1.0 and 0.0 <= r["named_recall"] <= 1.0 for r in rows[1:])


def test_named_kept_measures_the_named_objects_on_the_kept_tokens():
    from types import SimpleNamespace

    masks = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    q = A.Question("q", None, "is the red circle left of the blue square ?", "yes", "relation", (0, 1), masks)
    one = A.named_kept(q, SimpleNamespace(tokens_before=6, kept=torch.tensor([1, 2])))
    assert one == {"recall": pytest.approx(0.25), "reached": 0.5, "all_reached": False}
    both = A.named_kept(q, SimpleNamespace(tokens_before=6, kept=torch.tensor([0, 5])))
    assert both["all_reached"] and both["recall"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert A.named_kept(q, SimpleNamespace(tokens_before=7, kept=torch.tensor([0]))) is None  # another grid
    absent = A.Question("q", None, "is there a cross ?", "no", "exist", (), masks)
    assert A.named_kept(absent, SimpleNamespace(tokens_before=6, kept=torch.tensor([0]))) is None


def _question_file(folder, n=3, seed=11):
    """A LLaVA-evaluation question file of ``n`` lab-world questions (integer ids) and its images in ``folder``."""
    from PIL import Image

    from eadp_lab.world import sample

    lines = []
    for r in sample("heldout", n, seed=seed, grid=None):
        Image.fromarray(r.image).save(folder / f"{r.index}.png")
        lines.append({"question_id": r.index, "image": f"{r.index}.png", "text": r.question.text,
                      "answer": r.answer, "category": r.qtype})
    (folder / "q.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder / "q.jsonl", lines


def _llava_answers(question_file, answers_file):
    """Answers as LLaVA's scoring scripts read them (eval_pope.py): the question file's questions by their own
    question_id, and each answer looked up there by its question_id."""
    questions = {q["question_id"]: q for q in map(json.loads, open(question_file))}
    answers = [json.loads(line) for line in open(answers_file)]
    return {a["question_id"]: (questions[a["question_id"]], a) for a in answers}


def test_question_file_in_llava_eval_format(tmp_path):
    qfile, lines = _question_file(tmp_path)
    lines[-1].pop("answer")  # answers are optional
    qfile.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out, answers = tmp_path / "acc.json", tmp_path / "answers.jsonl"
    assert A.main(["--question-file", str(qfile), "--image-folder", str(tmp_path), "--methods", "none,pool",
                   "--budgets", "28", "--positions", "original", "--json", str(out), "--answers-file",
                   str(answers)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert all(r["positions"] == "original" for r in rows)
    assert [r["method"] for r in rows] == ["none", "pool"]
    assert all(r["named_reached"] is None and r["named_questions"] == 0 for r in rows)  # no ground truth
    assert all(sum(t["questions"] for t in r["per_type"].values()) == 2 for r in rows)  # scored: with an answer
    assert report["max_new_tokens"] == A.MAX_NEW_TOKENS["file"] and report["dtype"] == "float32"
    assert report["device"] == "cpu"
    # One file per method and budget, read back the way LLaVA's scripts read answers.
    assert not answers.exists()
    ids = set()
    for r in rows:
        path = tmp_path / f"answers-{r['method']}-{r['budget']}.jsonl"
        by_id = _llava_answers(qfile, path)
        assert sorted(by_id) == sorted(x["question_id"] for x in lines)  # ints, as in the question file
        for qid, (question, a) in by_id.items():
            assert isinstance(qid, int)
            assert set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
            assert a["prompt"] == question["text"] and a["model_id"] == "lab-llava"
            assert set(a["metadata"]) == {"run", "question"}  # what produced it (the .run.json record beside it)
            assert isinstance(a["answer_id"], str) and len(a["answer_id"]) == 22
            ids.add(a["answer_id"])
        scored = [A.first_word(a["text"]) == A.first_word(q["answer"]) for q, a in by_id.values() if "answer" in q]
        assert r["accuracy"] == pytest.approx(sum(scored) / len(scored), abs=1e-4)  # the figure is exact match
    assert len(ids) == 3 * len(rows)  # every answer_id unique


def test_answers_keep_the_whole_generated_text(tmp_path, monkeypatch):
    """The file keeps the whole answer up to --max-new-tokens; the figure still scores its first word.
    (The lab LLaVA stops after one word, so here it is not allowed to stop.)"""
    def load_without_eos(*args, **kwargs):
        loaded = evaluation.load(*args, **kwargs)
        model = loaded[0]
        ends = [t for t in (model.generation_config.eos_token_id, model.generation_config.pad_token_id) if t is not None]
        model.generation_config.eos_token_id = None
        generate = model.generate

        def generate_on(*args, suppress_tokens=None, **kwargs):  # nor write the end or padding token
            return generate(*args, suppress_tokens=list(suppress_tokens or []) + ends, **kwargs)

        model.generate = generate_on
        return loaded

    monkeypatch.setattr(A, "load", load_without_eos)
    qfile, lines = _question_file(tmp_path, n=2)
    common = ["--question-file", str(qfile), "--image-folder", str(tmp_path), "--methods", "none"]
    for name, tokens in (("one", 1), ("long", 6)):
        assert A.main(common + ["--answers-file", str(tmp_path / f"{name}.jsonl"), "--max-new-tokens", str(tokens),
                                "--json", str(tmp_path / f"{name}.json")]) == 0
    one = A.read_answers(tmp_path / "one-none-256.jsonl")
    long = A.read_answers(tmp_path / "long-none-256.jsonl")
    assert set(one) == set(long) == {x["question_id"] for x in lines}
    for qid in one:
        assert long[qid]["text"].startswith(one[qid]["text"]) and len(long[qid]["text"]) > len(one[qid]["text"])
    accuracy = [json.loads((tmp_path / f"{name}.json").read_text())["results"][0]["accuracy"] for name in ("one", "long")]
    assert accuracy[0] == accuracy[1]


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, capsys):
    qfile, lines = _question_file(tmp_path, n=4, seed=12)
    answers = tmp_path / "a.jsonl"
    args = ["--question-file", str(qfile), "--image-folder", str(tmp_path), "--methods", "none,pool",
            "--budgets", "28", "--batch", "2", "--answers-file", str(answers), "--json", str(tmp_path / "r.json")]
    assert A.main(args) == 0
    first = json.loads((tmp_path / "r.json").read_text())["results"]
    pool = tmp_path / "a-pool-28.jsonl"
    full = pool.read_text()
    kept = full.splitlines(keepends=True)[0]
    pool.write_text(kept + full.splitlines(keepends=True)[1][:25])  # killed in the middle of the second line
    assert A.main(args) == 0
    again = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["resumed"] for r in again] == [4, 1] and [r["resumed"] for r in first] == [0, 0]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in first]
    text = pool.read_text()
    assert text.startswith(kept) and text.endswith("\n")
    written = [json.loads(line) for line in text.splitlines()]  # every line whole again
    assert sorted(w["question_id"] for w in written) == sorted(x["question_id"] for x in lines)
    assert len((tmp_path / "a-none-256.jsonl").read_text().splitlines()) == 4  # nothing asked twice
    # Another model's answers are not resumed from: a clear error, no traceback.
    other = json.loads(kept)
    (tmp_path / "a-none-256.jsonl").write_text(json.dumps({**other, "model_id": "llava-hf/llava-1.5-7b-hf"}) + "\n")
    capsys.readouterr()
    assert A.main(args) == 2
    err = capsys.readouterr().err
    assert "a-none-256.jsonl" in err and "llava-1.5-7b-hf" in err and "Traceback" not in err
    (tmp_path / "a-none-256.jsonl").write_text("garbage\n" + kept)
    with pytest.raises(A.AnswersFileError, match=r"a-none-256.jsonl:1: not an answer"):
        A.read_answers(tmp_path / "a-none-256.jsonl")


def test_question_files_are_checked_before_the_run(tmp_path, capsys):
    from eadp_lab.evaluation import MissingImageError, QuestionFileError

    qfile, lines = _question_file(tmp_path, n=3)
    good = [json.dumps(x) for x in lines]
    cases = {
        "broken": ([good[0], '{"question_id": 7, "image": ', good[2]], QuestionFileError, r"q.jsonl:2: not a JSON"),
        "key": ([good[0], good[1], json.dumps({"question_id": 9, "text": "?"})], QuestionFileError,
                r"q.jsonl:3: missing 'image'"),
        "repeat": ([good[0], good[1], good[0]], QuestionFileError, r"q.jsonl:3: question_id .* repeats line 1"),
        "image": ([good[0], json.dumps({**lines[1], "image": "gone/x.png"}), good[2]], MissingImageError,
                  r"q.jsonl:2: image 'gone/x.png' not found: .*gone/x.png"),
    }
    for name, (content, error, message) in cases.items():
        qfile.write_text("\n".join(content) + "\n")
        with pytest.raises(error, match=message):
            A.file_questions(qfile, tmp_path, limit=1)  # the whole file, not only the questions asked
        capsys.readouterr()
        code = A.main(["--question-file", str(qfile), "--image-folder", str(tmp_path), "--methods", "none"])
        err = capsys.readouterr().err
        assert code == 2 and "q.jsonl" in err and "Traceback" not in err, name
    assert issubclass(MissingImageError, FileNotFoundError) and issubclass(MissingImageError, ValueError)
    (tmp_path / f"{lines[0]['image']}").write_bytes(b"not a png")
    qfile.write_text("\n".join(good) + "\n")
    with pytest.raises(QuestionFileError, match=r"q.jsonl:1: image .* cannot be read"):
        A.file_questions(qfile, tmp_path)
    with pytest.raises(MissingImageError, match="nothere.jsonl"):
        A.file_questions(tmp_path / "nothere.jsonl", tmp_path)


def test_scoring_notice_says_when_a_model_is_scored_without_a_clip():
    assert A.scoring_notice("llm", None, None, "the presets") == (
        "scoring in the language model's own embedding space (no --clip given); similarity sign each method's "
        "preset (the presets)")
    assert A.scoring_notice("llm", "c", -1.0, "--sign") == (
        "scoring in the language model's own embedding space; similarity sign -1 (--sign)")


def test_device_and_dtype_reach_the_model_and_the_clip(tmp_path):
    model, processor, clip, _ = A.load(dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16 and clip.dtype == torch.bfloat16 and model.device.type == "cpu"
    out = tmp_path / "r.json"
    assert A.main(["--questions", "2", "--methods", "eadp", "--budgets", "14", "--dtype", "bfloat16",
                   "--device-map", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu" and report["device_map"] == "cpu"
    assert report["max_new_tokens"] == A.MAX_NEW_TOKENS["lab"]
    (row,) = report["results"]
    assert row["questions"] == 2 and row["kept_tokens_mean"] == 14 and row["accuracy"] is not None
    with pytest.raises(SystemExit):
        A.main(["--dtype", "float33"])


def test_lab_questions_match_the_world():
    from eadp_lab.world import sample

    qs = A.lab_questions(4, seed=9)
    rs = sample("heldout", 4, seed=9, grid=None)
    assert [q.text for q in qs] == [r.question.text for r in rs]
    assert all(np.array_equal(q.image, r.image) for q, r in zip(qs, rs))
    for q, r in zip(qs, rs):
        assert q.named == tuple(sorted({k for ref in r.question.refs for k in ref}))
        assert q.masks.shape == (len(r.scene.objects), 256) and q.masks.dtype == torch.bool


def test_results_for_keeps_the_loaded_models_reports(tmp_path):
    from eadp_lab.evaluation import LAB_LLAVA, results_for

    rows = [{"method": "none", "budget": 256, "accuracy": 0.5, "n": 2}]
    folder = tmp_path / "data" / "results"
    folder.mkdir(parents=True)
    (folder / "accuracy-lab.json").write_text(json.dumps({"results": rows, "model": str(LAB_LLAVA)}))
    (folder / "accuracy-old.json").write_text(json.dumps({"results": rows}))  # no model: the lab LLaVA's
    (folder / "accuracy-llava.json").write_text(json.dumps({"results": rows, "model": "llava-hf/llava-1.5-7b-hf"}))
    mine, other = results_for("lab", root=folder)
    assert [p.name for p, _ in mine] == ["accuracy-lab.json", "accuracy-old.json"]
    assert [p.name for p in other] == ["accuracy-llava.json"]
    mine, other = results_for("llava-hf/llava-1.5-7b-hf", root=folder)
    assert [p.name for p, _ in mine] == ["accuracy-llava.json"] and len(other) == 2


def test_blind_baseline_and_against_chance_by_hand():
    from types import SimpleNamespace

    from eadp_lab.evaluation import against_chance, blind_baseline

    qs = [SimpleNamespace(qtype="colour", answer=a) for a in ("red", "red", "blue", "green")]
    qs += [SimpleNamespace(qtype="exist", answer=a) for a in ("yes", "no")] + [SimpleNamespace(qtype="exist", answer=None)]
    blind = blind_baseline(qs)
    assert blind["colour"] == {"answer": "red", "accuracy": 0.5, "questions": 4}
    assert blind["exist"]["accuracy"] == 0.5 and blind["exist"]["questions"] == 2
    results = [{"method": "none", "budget": 256, "accuracy": 0.5,
                "per_type": {"colour": {"accuracy": 0.75, "questions": 4}, "exist": {"accuracy": 0.0, "questions": 2}}},
               {"method": "eadp", "budget": 64, "accuracy": 0.1, "per_type": {}}]
    frame = against_chance(results, qs)
    assert list(frame.index) == ["colour", "exist", "all"]
    assert frame.loc["colour", "above blind"] == pytest.approx(0.25)
    assert frame.loc["exist", "above blind"] == pytest.approx(-0.5)
    assert frame.loc["all", "blind accuracy"] == pytest.approx(0.5) and frame.loc["all", "questions"] == 6
    with pytest.raises(ValueError, match="none"):
        against_chance(results[1:], qs)
    score = {k: results[0][k] for k in ("accuracy", "per_type")}  # one score, as score_answers returns
    assert against_chance(score, qs).equals(frame)


def test_answer_kind_names_the_world_kind_of_the_first_word():
    from eadp_lab.evaluation import answer_kind

    assert answer_kind("orange") == "colour" and answer_kind("two things") == "count"
    assert answer_kind("Yes.") == answer_kind("no") and answer_kind("banana") == "not a word of the world"


def test_run_summary_names_the_file_and_the_command(tmp_path):
    from eadp_lab.evaluation import ROOT, run_summary

    report = {"command": "python -m eadp_lab bench accuracy --seed 1", "positions": "original", "questions": 10}
    text = run_summary(ROOT / "data" / "results" / "x.json", report)
    assert text.splitlines()[0] == "data/results/x.json" and "--seed 1" in text and "positions: original" in text
    assert run_summary(tmp_path / "y.json", {}).splitlines()[0] == str(tmp_path / "y.json")
    assert "the presets (-1)" in run_summary(tmp_path / "y.json", {})


def test_score_hits_groups_by_type_as_score_answers_does():
    from eadp_lab.evaluation import score_hits

    score = score_hits(["colour", "colour", "exist", None], [True, False, True, True])
    assert score == {"accuracy": 0.75, "per_type": {"all": {"accuracy": 1.0, "questions": 1},
                                                    "colour": {"accuracy": 0.5, "questions": 2},
                                                    "exist": {"accuracy": 1.0, "questions": 1}}}
    assert score_hits([], []) == {"accuracy": None, "per_type": {}}


def test_max_standard_error_is_the_binomial_one_at_one_half():
    from eadp_lab.evaluation import max_standard_error

    n = 2000
    assert max_standard_error(n) == pytest.approx(np.sqrt(0.5 * 0.5 / n))
    # no accuracy on n questions has a larger binomial standard error
    assert all(np.sqrt(p * (1 - p) / n) <= max_standard_error(n) + 1e-12 for p in np.linspace(0, 1, 101))
    with pytest.raises(ValueError, match="question"):
        max_standard_error(0)


def test_against_best_names_the_best_rival_per_budget_and_leaves_the_ablations_out():
    from eadp_lab.evaluation import against_best, max_standard_error, paired_difference

    n = 2000
    margin = np.sqrt(2) * max_standard_error(n)  # 1.58 points

    def row(method, budget, acc, reached=None):
        return {"method": method, "budget": budget, "accuracy": acc, "named_reached": reached, "questions": n}

    rows = [row("none", 256, 0.93, 1.0),
            row("eadp", 64, 0.87, 0.95), row("eadp", 28, 0.80, 0.81), row("eadp", 14, 0.67, 0.59),
            row("eadp-topk", 64, 0.99, 0.9), row("eadp-topk", 28, 0.99), row("eadp-topk", 14, 0.99),  # an ablation
            row("topk", 64, 0.70, 0.72), row("topk", 28, 0.805, 0.6), row("topk", 14, 0.40),
            row("cdpruner", 64, 0.85, 0.93), row("cdpruner", 28, 0.79, 0.85), row("cdpruner", 14, 0.73, 0.79)]
    out = against_best({"results": rows})
    assert list(out.index) == [64, 28, 14]
    assert list(out["best"]) == ["cdpruner", "topk", "cdpruner"]  # eadp-topk is never the rival
    assert out.loc[64, "difference"] == pytest.approx(0.02) and 0.02 > margin
    assert out.attrs["margin"] == pytest.approx(margin)
    assert out.attrs["questions"] == n
    assert list(out["verdict"]) == ["leads", "level", "trails"]
    assert out.loc[14, "best_named_reached"] == 0.79 and out.loc[28, "best_named_reached"] == 0.6
    assert out["paired_low"].isna().all() and out["paired_high"].isna().all()  # no hits recorded
    # with hits: the paired 95% interval of eadp minus its rival, question by question
    for r in rows:
        r["hits"] = "1" * round(r["accuracy"] * 200) + "0" * (200 - round(r["accuracy"] * 200))
    out = against_best({"results": rows})
    d, se, _ = paired_difference(rows[1]["hits"], rows[10]["hits"])  # eadp and cdpruner at 64
    assert d == pytest.approx(0.02) and se > 0
    assert out.loc[64, "paired_low"] == pytest.approx(d - 1.96 * se)
    assert out.loc[64, "paired_high"] == pytest.approx(d + 1.96 * se)
    with pytest.raises(ValueError, match="other method"):
        against_best({"results": [r for r in rows if r["method"].startswith("eadp") or r["method"] == "none"]})


def _long_rows(shift=0.0):
    """A long run's rows: none, eadp, its ablation and two rivals at 64 and 14 tokens, per type."""
    def row(method, budget, acc, reached, colour, count):
        return {"method": method, "budget": budget, "accuracy": acc + shift, "named_reached": reached,
                "questions": 2000, "per_type": {"colour": {"accuracy": colour, "questions": 1000},
                                                "count": {"accuracy": count, "questions": 1000}}}

    return [row("none", 256, 0.9, None, 0.95, 0.85),
            row("eadp", 64, 0.85, 0.95, 0.9, 0.8), row("eadp", 14, 0.6, 0.6, 0.7, 0.5),
            row("eadp-topk", 64, 0.7, 0.9, 0.8, 0.6), row("eadp-topk", 14, 0.45, 0.7, 0.5, 0.4),
            row("topk", 64, 0.6, 0.9, 0.7, 0.5), row("topk", 14, 0.4, 0.85, 0.5, 0.3),
            row("cdpruner", 64, 0.84, 0.93, 0.9, 0.78), row("cdpruner", 14, 0.7, 0.8, 0.8, 0.6)]


def test_long_run_figures_quote_the_verdict_the_ablations_and_the_widest_reach_gap():
    from eadp_lab.evaluation import long_run_figures, max_standard_error

    got = long_run_figures({"results": _long_rows()})
    assert got["long_verdict"] == ("EADP is level at 64 tokens (85.0% against cdpruner's 84.0%, +1.0 points; named "
                                   "objects reached on 95.0% against 93.0%) and trails at 14 tokens (60.0% against "
                                   "cdpruner's 70.0%, -10.0 points; named objects reached on 60.0% against 80.0%)")
    assert got["long_n"] == 2000 and got["long_se"] == pytest.approx(max_standard_error(2000))
    assert got["long_budget"] == 14 and got["long_ablations"] == "eadp-topk -15.0"
    assert got["long_paired_intervals"] == "the runs record no per-question hits"
    rows = _long_rows()
    for r in rows:  # 100 questions; eadp at 64 right on one more than cdpruner, at 14 on ten fewer
        r["hits"] = "1" * round(100 * r["accuracy"]) + "0" * (100 - round(100 * r["accuracy"]))
    paired = long_run_figures({"results": rows})["long_paired_intervals"]
    assert paired.startswith("64 tokens +1.0 [-1.0, +3.0] against cdpruner, 14 tokens -10.0 [")
    # eadp at 14 against every token: colour -25 points, count -35
    assert got["long_type_worst"] == "count" and got["long_type_worst_change"] == pytest.approx(-0.35)
    assert got["long_type_best"] == "colour" and got["long_type_best_change"] == pytest.approx(-0.25)
    # topk at 14 reaches the named objects on 85% but answers 40%: the widest gap
    assert (got["reach_method"], got["reach_budget"]) == ("topk", 14)
    assert got["reach_named"] == pytest.approx(0.85) and got["reach_acc"] == pytest.approx(0.4)
    assert got["reach_eadp_named"] == pytest.approx(0.6) and got["reach_eadp_acc"] == pytest.approx(0.6)
    assert got["reach_verdict"] == "reaching the named objects is not enough for the answer"
    empty = long_run_figures(None)
    assert set(empty) == set(got) and np.isnan(empty["long_se"]) and empty["long_n"] == 0


def test_positions_figures_name_the_cells_beyond_the_tolerance_with_their_sign():
    from eadp_lab.evaluation import positions_figures

    renumbered, original = _long_rows(), _long_rows()
    got = positions_figures({"results": renumbered}, {"results": original})
    assert got["positions_beyond"] == 0 and got["positions_cells"] == 8 and got["positions_gap_max"] == 0
    assert got["positions_verdict"].startswith("so the target of within 2 points everywhere is met")
    assert got["positions_best"] == "Both runs pick the same best method at every budget: eadp at 64 tokens, " \
                                    "cdpruner at 14 tokens"
    original[1]["accuracy"] -= 0.03  # eadp at 64 renumbered 3 points above
    original[-1]["accuracy"] += 0.025  # cdpruner at 14 renumbered 2.5 points below; exactly 2 does not count
    original[2]["accuracy"] += 0.02
    got = positions_figures({"results": renumbered}, {"results": original})
    assert got["positions_beyond"] == 2 and got["positions_gap_max"] == pytest.approx(0.03)
    assert got["positions_gap_mean"] == pytest.approx((0.03 - 0.025 - 0.02) / 8)
    assert got["positions_verdict"] == ("so the target of within 2 points everywhere is missed in those cells, of "
                                        "both signs: eadp at 64 tokens +3.0 points, cdpruner at 14 tokens -2.5 points")
    assert got["positions_best"] == "The two runs pick different best methods at 64 tokens (eadp renumbered, " \
                                    "cdpruner original)"
    assert positions_figures(None, original)["positions_verdict"] == "not measured"


def test_answer_hits_mark_each_question_and_score_answers_counts_them():
    from types import SimpleNamespace

    from eadp_lab.evaluation import answer_hits, score_answers

    qs = [SimpleNamespace(qid=i, qtype=t, answer=a) for i, (t, a) in
          enumerate([("colour", "red"), ("colour", "blue"), ("exist", "yes"), ("exist", None), ("count", "two")])]
    texts = {0: "Red.", 1: "green", 2: "yes it is", 3: "no"}  # 4 not answered, 3 has no reference
    assert answer_hits(qs, texts) == "101--"
    assert score_answers(qs, texts) == {"accuracy": round(2 / 3, 4), "per_type": {
        "colour": {"accuracy": 0.5, "questions": 2}, "exist": {"accuracy": 1.0, "questions": 1}}}


def test_paired_difference_by_hand():
    from eadp_lab.evaluation import paired_difference

    gap, se, n = paired_difference("1100-1", "1010-0")  # differences 0, +1, -1, 0, (skip), +1
    assert n == 5 and gap == pytest.approx(0.2)
    assert se == pytest.approx(np.std([0, 1, -1, 0, 1], ddof=1) / np.sqrt(5))
    assert paired_difference("1111", "1111")[:2] == (0.0, 0.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_difference("11", "111")
    with pytest.raises(ValueError, match="at least two"):
        paired_difference("1-", "-1")


def test_positions_figures_give_paired_intervals_when_the_runs_record_hits():
    from eadp_lab.evaluation import positions_figures, positions_intervals

    n = 400
    renumbered, original = _long_rows(), _long_rows()
    assert "no paired intervals" in positions_figures({"results": renumbered}, {"results": original})[
        "positions_intervals"]
    for a, b in zip(renumbered, original):
        a["hits"] = b["hits"] = "1" * 200 + "0" * 200
    # eadp at 64: renumbered right on 16 questions (4 points) the original misses, nothing the other way
    renumbered[1]["hits"] = "1" * 216 + "0" * 184
    renumbered[1]["accuracy"] = 216 / n
    # cdpruner at 14: 30 questions one way and 20 the other (2.5 points net): too noisy to be clear
    original[-1]["hits"] = "0" * 30 + "1" * 170 + "1" * 20 + "0" * 180
    original[-1]["accuracy"] = renumbered[-1]["accuracy"] - 0.025
    for rows in (renumbered, original):
        for r in rows:
            r["accuracy"] = r["hits"].count("1") / n if r["method"] != "none" else r["accuracy"]
    paired = positions_intervals({"results": renumbered}, {"results": original})
    assert paired.loc[("eadp", 64), "gap"] == pytest.approx(0.04) and paired.loc[("eadp", 64), "n"] == n
    se = np.std([1] * 16 + [0] * 384, ddof=1) / np.sqrt(n)
    assert paired.loc[("eadp", 64), "low"] == pytest.approx(0.04 - 1.96 * se)
    got = positions_figures({"results": renumbered}, {"results": original})
    assert got["positions_beyond"] == 2 and got["positions_clear"] == 1
    assert got["positions_intervals"].startswith("with 95% intervals of the paired difference (400 questions, "
                                                 "half-width 0.0 points in the median cell), 1 of the 8 cells lie "
                                                 "wholly beyond 2 points and 1 wholly away from zero: eadp at 64 "
                                                 "tokens +4.0 [")
    assert got["positions_intervals"].endswith("cdpruner at 14 tokens +2.5 [-1.0, +6.0]")
    assert set(positions_figures(None, None)) == set(got)


def test_pool_runs_join_the_hits_and_recompute_the_accuracy():
    from eadp_lab.evaluation import pool_runs

    def run(hits, positions="renumber", sign=1.0):
        return {"results": [{"method": m, "budget": b, "accuracy": 0.0, "hits": h}  # accuracy ignored: recomputed
                            for (m, b), h in hits.items()], "positions": positions, "sign": sign}

    a = run({("none", 256): "1111", ("eadp", 64): "1100"})
    b = run({("eadp", 64): "10-1", ("none", 256): "0000"}, sign=-1.0)  # another order, another sign
    got = pool_runs(a, b)
    assert got["positions"] == "renumber" and "sign" not in got
    assert [(r["method"], r["budget"], r["hits"], r["questions"]) for r in got["results"]] == [
        ("none", 256, "11110000", 8), ("eadp", 64, "110010-1", 8)]
    assert [r["accuracy"] for r in got["results"]] == [0.5, round(4 / 7, 4)]  # "-" is not scored
    with pytest.raises(ValueError, match="at least two"):
        pool_runs(a)
    with pytest.raises(ValueError, match="same methods and budgets"):
        pool_runs(a, run({("none", 256): "1111"}))
    with pytest.raises(ValueError, match="eadp at 64 tokens: every run must record"):
        pool_runs(a, run({("none", 256): "1111", ("eadp", 64): ""}))


def _gap_runs(gaps: dict, n: int = 100):
    """A (renumbered, original) pair of runs on ``n`` questions whose renumbered-minus-original gap
    per (method, budget) is ``gaps`` (in points: one question each), both at 50% originally."""
    def row(method, budget, right):  # one question type, so the card's split by type has something to split
        return {"method": method, "budget": budget, "accuracy": right / n, "questions": n,
                "hits": "1" * right + "0" * (n - right),
                "per_type": {"colour": {"accuracy": right / n, "questions": n}}}

    renumbered, original = [row("none", 256, 90)], [row("none", 256, 90)]
    for (method, budget), gap in gaps.items():
        renumbered.append(row(method, budget, n // 2 + gap))
        original.append(row(method, budget, n // 2))
    return {"results": renumbered, "positions": "renumber"}, {"results": original, "positions": "original"}


def test_replication_figures_compare_two_samples_cell_by_cell_and_pool_them():
    from eadp_lab.evaluation import replication_figures

    cells = [("eadp", 64), ("eadp", 14), ("topk", 64), ("topk", 14), ("cdpruner", 64), ("cdpruner", 14)]
    first = _gap_runs(dict(zip(cells, [3, 1, -3, 0, 2, -1])))
    second = _gap_runs(dict(zip(cells, [4, 2, -1, -3, 1, 0])))
    got = replication_figures(first, second)
    # ranks 6 4 1 3 5 2 against 6 5 2 1 4 3: sum of squared rank differences 8, rho = 1 - 6 * 8 / (6 * 35)
    assert got["replication_cells"] == 6 and got["replication_rho"] == pytest.approx(1 - 48 / 210)
    assert got["replication_p"] > 0.05 and got["replication_reading"].startswith(
        "the cells' gaps do not clearly agree across the two samples (rank correlation +0.77, permutation p ")
    assert got["replication_beyond"] == 2  # eadp at 64 (+4) and topk at 14 (-3); exactly 2 does not count
    assert got["replication_both"] == "1 cell is beyond 2 points in both samples: eadp at 64 tokens (+3.0 and +4.0)"
    assert got["replication_best"] == "Both samples pick the same best method at every budget: eadp at 64 tokens, " \
                                      "eadp at 14 tokens"
    # pooled over 200 questions a cell: the mean of the two gaps; topk at 64 lands on exactly -2
    assert got["pooled_beyond"] == 1 and got["pooled_gap_max"] == pytest.approx(0.035)
    assert got["pooled_verdict"].endswith("all positive (renumbered above original): eadp at 64 tokens +3.5 points")
    assert got["pooled_intervals"].startswith("with 95% intervals of the paired difference (200 questions, ")
    same = replication_figures(first, first)
    assert same["replication_rho"] == pytest.approx(1.0) and same["replication_p"] < 0.01
    assert same["replication_reading"].startswith("the cells' gaps agree across the two samples (rank correlation "
                                                  "+1.00, permutation p 0.003)")
    assert same["replication_both"].startswith("2 cells are beyond 2 points in both samples: eadp at 64 tokens")
    empty = replication_figures(first, None)
    assert set(empty) == set(got) and empty["replication_both"] == "not measured" and empty["pooled_beyond"] == 0
    with pytest.raises(ValueError, match="same methods and budgets"):
        replication_figures(first, _gap_runs(dict(zip(cells[:4], [1, 1, 1, 1]))))
    # the lab LLaVA's card quotes the same figures under the second sample's gap table, and only with both runs
    from eadp_lab.labmodels.cards import pruning_section

    meta = {"questions": {"count": 100}, "sign": 1.0}
    first = tuple({**run, **meta, "seed": 1, "command": f"first {k}"} for k, run in enumerate(first))
    second = tuple({**run, **meta, "seed": 2, "command": f"second {k}"} for k, run in enumerate(second))
    card = pruning_section(*first, replicate=second)
    part = card[card.index("### The same two runs on a second sample of questions"):]
    assert part.splitlines()[2] == ("`second 0`; `second 1` (100 questions, seed 2). Renumbered minus original "
                                    "positions (points):")
    assert "| eadp | +4.0 | +2.0 |" in part and "| topk | -1.0 | -3.0 |" in part
    assert (f"2 of 6 cells differ by more than 2 points here; {got['replication_both']}. Cell by cell, "
            f"{got['replication_reading']}. Pooled over both samples, 1 of the 6 cells differ by more than 2 points, "
            f"{got['pooled_verdict']}; compared question by question, {got['pooled_intervals']}. In the renumbered "
            f"runs, both samples pick the same best method") in part
    assert "second sample" not in pruning_section(*first, replicate=(second[0], None))
    assert "second sample" not in pruning_section(*first)


def test_spacing_frame_correlations_and_figures():
    from eadp_lab.evaluation import (positions_type_gap, spacing_correlations, spacing_figures, spacing_frame,
                                     type_gap_figures)

    renumbered, original = _long_rows(), _long_rows()
    for a, b in zip(renumbered, original):
        a["hits"] = b["hits"] = "1" * 100 + "0" * 100
    # at 14 tokens the gap rises with the spacing: topk -3, eadp-topk -1, cdpruner +1, eadp +3 (points of 200)
    spacing = {("topk", 14): (1.1, -6), ("eadp-topk", 14): (1.3, -2), ("cdpruner", 14): (1.9, 2), ("eadp", 14): (2.2, 6),
               ("topk", 64): (1.0, 2), ("eadp-topk", 64): (1.2, 0), ("cdpruner", 64): (1.4, 0), ("eadp", 64): (1.5, 2)}
    for r in renumbered:
        nearest, moved = spacing.get((r["method"], r["budget"]), (1.0, 0))
        r["kept_nearest"], r["kept_gap_cv"] = nearest, 3.0 - nearest
        r["hits"] = ("1" * (100 + moved) + "0" * (100 - moved)) if moved >= 0 else ("0" * -moved + "1" * (100 + moved)
                                                                                      + "0" * 100)
    frame = spacing_frame(renumbered, {"results": renumbered}, {"results": original})
    assert frame.loc[("eadp", 14), "gap"] == pytest.approx(0.03) and frame.loc[("eadp", 14), "nearest"] == 2.2
    assert frame.loc[("topk", 14), "gap_cv"] == pytest.approx(1.9)
    correlations = spacing_correlations(frame, permutations=2000)
    assert list(correlations.index) == [64, 14, "all"] and correlations.loc["all", "n"] == 8
    assert correlations.loc[14, "nearest_rho"] == pytest.approx(1.0) and correlations.loc[14, "gap_cv_rho"] == pytest.approx(-1.0)
    assert correlations.loc[64, "nearest_rho"] == pytest.approx(0.0)  # gaps +1 0 0 +1 against 1.0 1.2 1.4 1.5
    got = spacing_figures(frame, correlations, examples=2)
    assert got["spacing_budget"] == 14 and got["spacing_cells"] == 8 and got["spacing_budget_rho"] == pytest.approx(1.0)
    assert got["spacing_contrast"] == ("At 14 tokens the 2 most clustered selections change by (points) topk -3.0, "
                                       "eadp-topk -1.0; nearest kept neighbour 1.10 to 1.30 patches, the 2 most spread "
                                       "out by eadp +3.0, cdpruner +1.0; nearest kept neighbour 1.90 to 2.20 patches")
    # four methods cannot show a correlation beyond chance (2 of 24 pairings reach |rho| = 1): said so
    assert got["spacing_verdict"].startswith("at 14 tokens the relation is not distinguishable from chance (p 0.")
    clearer = correlations.copy()
    clearer.loc[14, "nearest_p"], clearer.loc[14, "nearest_rho"] = 0.01, -0.9
    assert spacing_figures(frame, clearer)["spacing_verdict"] == ("the more spread out a selection, the worse it "
                                                                  "does renumbered against its original positions")
    assert set(spacing_figures(None, None)) == set(got) and spacing_figures(None, None)["spacing_contrast"] == "not measured"
    # the lab LLaVA's card says it when the renumbered run recorded the spacing, and only then
    from eadp_lab.labmodels.cards import pruning_section

    meta = {"questions": {"count": 200}, "seed": 1, "sign": 1.0, "command": "cmd"}
    card = pruning_section({"results": renumbered, **meta}, {"results": original, **meta})
    assert f"rank correlation is {got['spacing_rho']:+.2f} over the 8 cells" in card
    assert got["spacing_contrast"] in card
    kinds = type_gap_figures(positions_type_gap({"results": renumbered}, {"results": original}))
    assert f"**Which questions.** Split by question type, {kinds['type_gap_rise']}; {kinds['type_gap_fall']}." in card
    assert "Split by answer" not in card  # these rows' questions cannot be made again (no lab source)
    del renumbered[3]["kept_nearest"]  # eadp-topk at 64
    with pytest.raises(ValueError, match="eadp-topk at 64"):
        spacing_frame(renumbered, {"results": renumbered}, {"results": original})
    assert "What the gap follows" not in pruning_section({"results": renumbered, **meta}, {"results": original, **meta})


def test_type_gap_and_answer_split_by_hand():
    from types import SimpleNamespace

    from eadp_lab.evaluation import answer_split, positions_type_gap, type_gap_figures

    renumbered, original = _long_rows(), _long_rows()
    renumbered[1]["per_type"]["count"]["accuracy"] = 0.9  # eadp at 64: count +10 points renumbered
    renumbered[6]["per_type"]["colour"]["accuracy"] = 0.45  # topk at 14: colour -5 points
    original[8]["per_type"]["colour"]["accuracy"] = 0.83  # cdpruner at 14: colour -3 points
    gap = positions_type_gap({"results": renumbered}, {"results": original})
    assert list(gap.columns) == ["colour", "count", "all"] and "none" not in gap.index.get_level_values("method")
    assert gap.loc[("eadp", 64), "count"] == pytest.approx(0.1) and gap.loc[("topk", 14), "colour"] == pytest.approx(-0.05)
    got = type_gap_figures(gap, examples=5)
    assert got["type_gap_cells"] == 8
    assert got["type_gap_rise"] == ("`count` questions gain +1.2 points on average over the 8 cells, at most eadp at "
                                    "64 tokens (count +10.0)")
    assert got["type_gap_fall"] == ("`colour` questions do worst, -1.0 points on average; the largest falls are topk "
                                    "at 14 tokens (colour -5.0), cdpruner at 14 tokens (colour -3.0)")
    assert got["type_gap_split"] == "not measured" and set(type_gap_figures(None)) == set(got)
    with pytest.raises(ValueError, match="same methods"):
        positions_type_gap({"results": renumbered}, {"results": original[:-1]})

    # the split reads the hits: four exist questions (yes, yes, no, no) and one colour question
    qs = [SimpleNamespace(qtype=t, answer=a) for t, a in
          [("exist", "yes"), ("exist", "yes"), ("exist", "no"), ("colour", "red"), ("exist", "no")]]
    for a, b in zip(renumbered, original):
        a["hits"], b["hits"] = "11110", "00110"  # renumbered right on both yes, original on neither
    original[1]["hits"] = "10-11"  # eadp at 64: one yes right, one no not scored
    split = answer_split({"results": renumbered}, {"results": original}, qs)
    assert split.loc[("eadp", 64, "yes"), "gap"] == pytest.approx(0.5)
    assert split.loc[("eadp", 64, "no"), "n"] == 1 and split.loc[("eadp", 64, "no"), "gap"] == pytest.approx(-1.0)
    assert split.loc[("topk", 14, "yes"), "renumbered"] == 1.0 and split.loc[("topk", 14, "yes"), "original"] == 0.0
    assert split.loc[("topk", 14, "no"), "gap"] == 0.0 and split.loc[("topk", 14, "no"), "n"] == 2
    got = type_gap_figures(gap, split)
    assert got["type_gap_split"] == ("on average -12.5 points on questions answered `no`, +93.8 points on questions "
                                     "answered `yes`; for eadp at 64 tokens, the cell where the answers differ most, "
                                     "`no` 0 of 1 right renumbered against 1 at the original positions, `yes` 2 of 2 "
                                     "right renumbered against 1 at the original positions")
    assert got["type_gap_reading"] == ("questions answered `yes` gain 106.2 points more than those answered `no` on "
                                       "average: at the original positions the model leans toward `no`, compared "
                                       "with renumbered")
    alike = split.copy()
    alike["gap"] = [0.01, 0.0] * (len(alike) // 2)
    assert type_gap_figures(gap, alike)["type_gap_reading"].startswith(
        "the two answers move alike (within 2 points of each other on average, 1.0 apart)")
    with pytest.raises(ValueError, match="hits for each of the 4 questions"):
        answer_split({"results": renumbered}, {"results": original}, qs[:4])
    with pytest.raises(ValueError, match="no 'size' question"):
        answer_split({"results": renumbered}, {"results": original}, qs, qtype="size")


def test_report_questions_are_the_runs_own_lab_questions():
    report = {"seed": 5, "questions": {"source": A.LAB_SOURCE, "count": 3}}
    made = A.lab_questions(3, seed=5)
    assert [(q.qid, q.text, q.answer) for q in A.report_questions(report)] == [(q.qid, q.text, q.answer) for q in made]
    assert [q.qid for q in A.report_questions(report, 2)] == [q.qid for q in made[:2]]
    assert A.report_questions({"seed": 5, "questions": {"source": "q.jsonl", "count": 3}}) is None


def test_spacing_rows_reuse_a_run_that_recorded_them_and_select_again_otherwise(lab):
    rows = A.run(A.lab_questions(4, seed=5), ["eadp", "topk"], [14], lab.model, lab.processor, lab.clip,
                 lab.clip_tokenizer, batch=2, seed=5, progress=False)
    report = {"results": rows, "seed": 5, "sign": 1.0, "questions": {"source": A.LAB_SOURCE, "count": 4}}
    same, where = A.spacing_rows(report, 2, lab.model, lab.processor, lab.clip, lab.clip_tokenizer)
    assert same is rows and where == "the run's own 4 questions"
    old = {**report, "results": [{k: v for k, v in r.items() if not k.startswith("kept_")} for r in rows]}
    again, where = A.spacing_rows(old, 2, lab.model, lab.processor, lab.clip, lab.clip_tokenizer, batch=2)
    assert where.startswith("the first 2 of the run's questions (seed 5)")
    assert [(r["method"], r["budget"], r["questions"]) for r in again] == [("eadp", 14, 2), ("topk", 14, 2)]
    # the selection does not depend on how many questions are asked: the first two images' spacing again
    firsts = A.run(A.lab_questions(2, seed=5), ["eadp", "topk"], [14], lab.model, lab.processor, lab.clip,
                   lab.clip_tokenizer, batch=2, seed=5, progress=False)
    assert [r["kept_nearest"] for r in again] == [r["kept_nearest"] for r in firsts]
    from_file = {**old, "questions": {"source": "questions.jsonl", "count": 4}}
    assert A.spacing_rows(from_file, 2, lab.model, lab.processor)[0] is None


def test_card_pruning_section_states_the_noise_of_its_question_count():
    from eadp_lab.labmodels.cards import pruning_section

    def report(acc):
        rows = [{"method": "none", "budget": 256, "accuracy": 0.6, "per_type": {}},
                {"method": "eadp", "budget": 64, "accuracy": acc, "per_type": {}},
                {"method": "topk", "budget": 64, "accuracy": 0.5, "per_type": {}}]
        return {"results": rows, "questions": {"count": 400}, "seed": 1, "sign": 1.0, "command": "cmd"}

    text = pruning_section(report(0.55), None)
    assert "`eadp` (55.0)" in text and "at most 2.5 points" in text and "under 7.1 points" in text
    assert pruning_section(None, None) == ""
