"""The accuracy bench: method names, settings, and the command end to end on the shipped lab models."""

import json

import numpy as np
import torch
import pytest

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

    assert set(METHODS) | set(A.ABLATIONS) == set(A.DEFAULT_METHODS)
    with pytest.raises(ValueError, match="method"):
        A.method_settings("fastv")


def test_first_word():
    assert A.first_word("Yes, there is.") == "yes"
    assert A.first_word(" two </s>") == "two"
    assert A.first_word("") == ""


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        A.main(["--methods", "fastv"])
    with pytest.raises(SystemExit):
        A.main(["--budgets", "0,14"])
    with pytest.raises(SystemExit):
        A.main(["--question-file", "x.jsonl"])
    assert "fastv" in capsys.readouterr().err


def test_command_end_to_end(tmp_path):
    from eadp_lab.bench import main as bench_main

    out = tmp_path / "acc.json"
    code = bench_main(["accuracy", "--seed", "5", "--questions", "6", "--budgets", "14",
                       "--methods", "none,eadp,eadp-topk,random", "--batch", "3", "--json", str(out)])
    assert code == 0 and out.exists() and not (tmp_path / "acc.json.tmp").exists()
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["method"], r["budget"]) for r in rows] == [("none", 256), ("eadp", 14), ("eadp-topk", 14), ("random", 14)]
    for r in rows:
        assert r["questions"] == 6 and 0.0 <= r["accuracy"] <= 1.0
        assert sum(t["questions"] for t in r["per_type"].values()) == 6
    assert rows[0]["kept_tokens_mean"] == 256 and rows[1]["kept_tokens_mean"] == 14
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


def test_question_file_in_llava_eval_format(tmp_path):
    from PIL import Image

    from eadp_lab.world import sample

    records = sample("heldout", 3, seed=11, grid=None)
    lines = []
    for r in records:
        Image.fromarray(r.image).save(tmp_path / f"{r.index}.png")
        lines.append({"question_id": r.index, "image": f"{r.index}.png", "text": r.question.text,
                      "answer": r.answer, "category": r.qtype})
    lines[-1].pop("answer")  # answers are optional
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out, answers = tmp_path / "acc.json", tmp_path / "answers.jsonl"
    A.main(["--question-file", str(tmp_path / "q.jsonl"), "--image-folder", str(tmp_path), "--methods", "none,pool",
            "--budgets", "28", "--positions", "original", "--json", str(out), "--answers-file", str(answers)])
    rows = json.loads(out.read_text())["results"]
    assert all(r["positions"] == "original" for r in rows)
    assert [r["method"] for r in rows] == ["none", "pool"]
    assert all(r["named_reached"] is None and r["named_questions"] == 0 for r in rows)  # no ground truth
    assert all(sum(t["questions"] for t in r["per_type"].values()) == 2 for r in rows)  # scored: with an answer
    written = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(written) == 6 and {w["metadata"]["method"] for w in written} == {"none", "pool"}


def test_lab_questions_match_the_world():
    from eadp_lab.world import sample

    qs = A.lab_questions(4, seed=9)
    rs = sample("heldout", 4, seed=9, grid=None)
    assert [q.text for q in qs] == [r.question.text for r in rs]
    assert all(np.array_equal(q.image, r.image) for q, r in zip(qs, rs))
    for q, r in zip(qs, rs):
        assert q.named == tuple(sorted({k for ref in r.question.refs for k in ref}))
        assert q.masks.shape == (len(r.scene.objects), 256) and q.masks.dtype == torch.bool
