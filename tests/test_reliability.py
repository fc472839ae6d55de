"""Nothing lost, nothing silently wrong: answers files that know their settings and are locked while
written, output paths checked before the work, atomic writers safe for two writers, question files and
checkpoints refused with one clear line."""

import json
import multiprocessing
import subprocess
import sys
import time

import pytest

from eadp_lab import _io
from eadp_lab.bench import accuracy as A
from eadp_lab.evaluation import (AnswersFileError, ModelLoadError, QuestionFileError, answers, file_questions,
                                 load, read_answers)
from eadp_lab.evaluation.loading import LAB_LLAVA

from test_accuracy import _question_file


def _common(tmp_path, qfile, *extra):
    return ["--question-file", str(qfile), "--image-folder", str(tmp_path), "--methods", "none", "--batch", "2",
            "--max-new-tokens", "2", *extra]


# --------------------------------------------------------------------------------------------- answers files
def test_a_resume_under_other_settings_or_questions_is_refused_naming_the_difference(tmp_path, capsys):
    qfile, lines = _question_file(tmp_path, n=3)
    out = tmp_path / "a.jsonl"
    assert A.main(_common(tmp_path, qfile, "--answers-file", str(out))) == 0
    path = tmp_path / "a-none-256.jsonl"
    record = json.loads(answers.record_path(path).read_text())
    assert record["run"]["max_new_tokens"] == 2 and record["run"]["positions"] == "renumber"
    before = path.read_text()
    for extra, named in ((["--positions", "original"], "positions: file 'renumber', this run 'original'"),
                         (["--max-new-tokens", "5"], "max_new_tokens: file 2, this run 5")):
        capsys.readouterr()
        args = _common(tmp_path, qfile, "--answers-file", str(out))
        args[args.index("--max-new-tokens"):args.index("--max-new-tokens") + 2] = []
        assert A.main(args + (extra if "--max-new-tokens" in extra else extra + ["--max-new-tokens", "2"])) == 2
        err = capsys.readouterr().err
        assert named in err and "--overwrite" in err and "Traceback" not in err
        assert path.read_text() == before  # nothing written, nothing lost
    # Another question file with the same question_ids: its texts differ, so the old answers are not its answers.
    other = [{**x, "text": "what colour is the object ?"} for x in lines]
    qfile.write_text("\n".join(json.dumps(x) for x in other) + "\n")
    capsys.readouterr()
    assert A.main(_common(tmp_path, qfile, "--answers-file", str(out))) == 2
    err = capsys.readouterr().err
    assert f"question_id {lines[0]['question_id']!r} was answered for another question" in err
    # --overwrite starts afresh: every answer is the new questions'.
    assert A.main(_common(tmp_path, qfile, "--answers-file", str(out), "--overwrite")) == 0
    assert {a["prompt"] for a in read_answers(path).values()} == {"what colour is the object ?"}


def test_answers_without_a_settings_record_are_not_resumed(tmp_path, capsys):
    qfile, lines = _question_file(tmp_path, n=2)
    out = tmp_path / "a.jsonl"
    assert A.main(_common(tmp_path, qfile, "--answers-file", str(out))) == 0
    answers.record_path(tmp_path / "a-none-256.jsonl").unlink()  # as an answers file of an older version
    capsys.readouterr()
    assert A.main(_common(tmp_path, qfile, "--answers-file", str(out))) == 2
    assert "no record of the settings" in capsys.readouterr().err


def test_a_question_answered_twice_is_an_error_on_resume(tmp_path):
    path = tmp_path / "a.jsonl"
    line = json.dumps({"question_id": 3, "text": "yes"})
    path.write_text(line + "\n" + json.dumps({"question_id": 4, "text": "no"}) + "\n" + line + "\n")
    with pytest.raises(AnswersFileError, match=r"a.jsonl:3: question_id 3 is answered twice \(first on line 1\)"):
        read_answers(path)


def test_an_answers_file_is_locked_while_a_run_writes_it(tmp_path, capsys):
    qfile, _ = _question_file(tmp_path, n=2)
    out = tmp_path / "a.jsonl"
    target = tmp_path / "a-none-256.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom eadp_lab.evaluation.answers import answers_lock\n"
         f"with answers_lock({str(target)!r}):\n    print('locked', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        capsys.readouterr()
        assert A.main(_common(tmp_path, qfile, "--answers-file", str(out))) == 2
        err = capsys.readouterr().err
        assert f"{target} is being written by process {holder.pid}" in err
        assert time.perf_counter() - start < 60  # at once, not after the other run
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()
    assert A.main(_common(tmp_path, qfile, "--answers-file", str(out))) == 0  # the lock went with its holder
    assert len(read_answers(target)) == 2


def test_an_answers_file_that_is_a_folder_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    qfile, _ = _question_file(tmp_path, n=2)
    monkeypatch.setattr(A, "load", lambda *a, **k: pytest.fail("the model loaded"))
    (tmp_path / "somedir").mkdir()
    for given in (str(tmp_path / "somedir") + "/", str(tmp_path / "somedir")):
        capsys.readouterr()
        assert A.main(_common(tmp_path, qfile, "--answers-file", given)) == 2
        assert "is a folder: give a file path" in capsys.readouterr().err
    assert not list(tmp_path.glob("somedir-*"))


# --------------------------------------------------------------------------------------------- output paths
def test_the_json_path_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    qfile, _ = _question_file(tmp_path, n=2)
    nested = tmp_path / "missing" / "dir" / "out.json"
    assert A.main(_common(tmp_path, qfile, "--json", str(nested))) == 0  # the folder is made
    assert json.loads(nested.read_text())["results"][0]["method"] == "none"
    monkeypatch.setattr(A, "load", lambda *a, **k: pytest.fail("the model loaded"))
    (tmp_path / "afile").write_text("x")
    for bad, says in ((tmp_path, "is a folder"), (tmp_path / "afile" / "out.json", "cannot be written")):
        capsys.readouterr()
        assert A.main(_common(tmp_path, qfile, "--json", str(bad))) == 2
        err = capsys.readouterr().err
        assert says in err and str(bad) in err and "Traceback" not in err


def test_a_write_that_fails_at_the_end_keeps_the_results_and_says_where(tmp_path, capsys, monkeypatch):
    qfile, _ = _question_file(tmp_path, n=2)

    def full_disk(path, data, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io, "write_json", full_disk)
    assert A.main(_common(tmp_path, qfile, "--json", str(tmp_path / "out.json"))) == 1
    err = capsys.readouterr().err
    saved = err.split("they are saved in ")[1].split()[0]
    assert "No space left on device" in err
    assert json.loads(open(saved).read())["results"][0]["method"] == "none"


def _hammer(path, tag, n):
    for i in range(n):
        _io.write_json(path, {"writer": tag, "i": i, "payload": [tag] * 20_000})


def test_two_writers_of_one_report_never_leave_invalid_json(tmp_path):
    path = tmp_path / "report.json"
    ctx = multiprocessing.get_context("spawn")
    for trial in range(3):
        writers = [ctx.Process(target=_hammer, args=(path, tag, 40)) for tag in ("a", "b")]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
            assert w.exitcode == 0
        data = json.loads(path.read_text())
        assert data["i"] == 39 and data["payload"] == [data["writer"]] * 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind


# --------------------------------------------------------------------------------------------- question files
@pytest.mark.parametrize("change, says", [
    ({"text": "   "}, r"q.jsonl:2 \(question_id .*\): text is blank"),
    ({"text": 123}, r"q.jsonl:2 \(question_id .*\): text must be a string, got int 123"),
    ({"image": 5}, r"q.jsonl:2 \(question_id .*\): image must be a string, got int 5"),
    ({"answer": ["yes"]}, r"q.jsonl:2 \(question_id .*\): answer must be a string or a number"),
])
def test_question_text_and_types_are_checked_up_front(tmp_path, change, says):
    qfile, lines = _question_file(tmp_path, n=3)
    lines[1].update(change)
    qfile.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(QuestionFileError, match=says):
        file_questions(qfile, tmp_path, limit=1)


def test_a_question_file_that_is_not_utf8_names_the_line(tmp_path, capsys):
    qfile, lines = _question_file(tmp_path, n=2)
    raw = qfile.read_bytes().splitlines()
    raw[1] = raw[1].replace(b'"text": "', b'"text": "caf\xe9 ')
    qfile.write_bytes(b"\n".join(raw) + b"\n")
    with pytest.raises(QuestionFileError, match=r"q.jsonl:2: not UTF-8 text \(byte 0xe9 at column"):
        file_questions(qfile, tmp_path)
    assert A.main(_common(tmp_path, qfile)) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_bad_seed_and_threads_are_usage_errors(capsys):
    for args in (["--seed", "-1"], ["--threads", "-1"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exit_:
            A.main(args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert args[0] in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- checkpoints
def _lab_copy(tmp_path):
    import shutil

    folder = tmp_path / "llava"
    shutil.copytree(LAB_LLAVA, folder)
    return folder


def test_a_bad_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(ModelLoadError, match=r"model folder .*nothere not found"):
        load(tmp_path / "nothere")
    folder = _lab_copy(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"weights in .*llava cannot be read .*truncated or corrupt"):
        load(folder)
    weights.write_bytes(data)
    (folder / "config.json").write_text('{"model_type": "llava", ')
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON"):
        load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no config.json"):
        load(folder)
    with pytest.raises(ModelLoadError, match=r"'org/not-cached' is not a folder here and could not be loaded"):
        load("org/not-cached")
    qfile, _ = _question_file(tmp_path, n=2)
    capsys.readouterr()
    assert A.main(_common(tmp_path, qfile, "--model", str(tmp_path / "nothere"))) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("not found") and "Traceback" not in err
