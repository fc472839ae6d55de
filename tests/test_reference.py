"""Every test vector made with the authors' code is reproduced within the tolerances.

tests/reference/ holds EADP's vectors (made with the published EADP code), and
tests/reference-baselines/ DivPrune's and CDPruner's (made with each baseline's published
selection code); each folder's README describes its format. Set EADP_REFERENCE_DIRS=dir1:dir2
to check more vectors in either format.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eadp_lab.reference import INPUT_NAMES, compare_case, run_case

HERE = Path(__file__).parent
BASELINES = HERE / "reference-baselines"
DIRS = [HERE / "reference", BASELINES] + [Path(p) for p in os.environ.get("EADP_REFERENCE_DIRS", "").split(":") if p]
CASES = sorted({p for d in DIRS for p in d.glob("*.json")})
OUTPUTS = {"llava": {"importance", "select_idx", "token_quotas", "keep_mask"},
           "qwen_llm_space": {"importance", "select_idx", "pruned_features"},
           "divprune": {"select_idx"},
           "cdpruner": {"relevance", "select_idx", "keep_mask"}}


def load_case(name: str, folder: Path = BASELINES):
    """``(settings, expected tensors, what run_case makes of the inputs)`` of a stored case."""
    settings = json.loads((folder / f"{name}.json").read_text())
    expected = load_file(folder / f"{name}.safetensors")
    return settings, expected, run_case(settings, {k: v for k, v in expected.items() if k in INPUT_NAMES})


def test_vectors_present():
    tracks = [json.loads(p.read_text()).get("track", "llava") for p in CASES]
    assert tracks.count("divprune") >= 2 and tracks.count("cdpruner") >= 2
    assert len(tracks) - tracks.count("divprune") - tracks.count("cdpruner") >= 4


@pytest.mark.parametrize("settings_path", CASES, ids=lambda p: p.stem)
def test_case_reproduced(settings_path):
    settings = json.loads(settings_path.read_text())
    expected = load_file(settings_path.with_suffix(".safetensors"))
    inputs = {k: v for k, v in expected.items() if k in INPUT_NAMES}
    got = run_case(settings, inputs)
    assert compare_case(expected, got) == []
    track = settings.get("track", "llava")
    assert set(got) == OUTPUTS[track]  # the outputs the format asks for, and no more
    assert OUTPUTS[track] <= set(expected)  # and every one of them was compared


def test_compare_case_detects_a_wrong_pick():
    settings_path = HERE / "reference" / "llava15_t64.json"
    expected = load_file(settings_path.with_suffix(".safetensors"))
    got = run_case(json.loads(settings_path.read_text()), {k: v for k, v in expected.items() if k in INPUT_NAMES})
    got["select_idx"] = got["select_idx"].clone()
    got["select_idx"][0, [3, 4]] = got["select_idx"][0, [4, 3]]  # same set, other order
    got["importance"] = got["importance"] + 2e-5
    problems = compare_case(expected, got)
    assert any("select_idx" in p for p in problems) and any("importance" in p for p in problems)


def test_cli_writes_the_outputs(tmp_path):
    case = HERE / "reference" / "llava16_anyres_t32"
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "eadp_lab.reference", "run", f"{case}.json", f"{case}.safetensors", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "select_idx" in proc.stdout
    expected = load_file(f"{case}.safetensors")
    assert compare_case(expected, load_file(out)) == []


def test_unknown_setting_is_an_error():
    settings = json.loads((HERE / "reference" / "llava15_t64.json").read_text())
    settings["entropy_keep_ration"] = 0.3  # a typo must not be ignored silently
    tensors = load_file(HERE / "reference" / "llava15_t64.safetensors")
    with pytest.raises(ValueError, match="entropy_keep_ration"):
        run_case(settings, {k: v for k, v in tensors.items() if k in INPUT_NAMES})


# ---------------------------------------------------------------- the baseline tracks


def test_divprune_joint_case_is_one_selection_over_the_image():
    settings, expected, got = load_case("divprune_anyres_joint_t320")
    assert settings["scope"] == "image" and got["select_idx"].shape == (1, 320)
    R, N = expected["image_features"].shape[:2]
    rows = expected["select_idx"][0] // N
    per_crop = torch.bincount(rows, minlength=R)
    assert int(per_crop.sum()) == 320 and len(set(per_crop.tolist())) > 1  # not an equal share per crop


def test_divprune_joint_case_through_the_registry():
    """prune('divprune') on the image's rows with 64 per row makes the stored joint selection."""
    from eadp_lab import PruneInputs, prune

    _, expected, _ = load_case("divprune_anyres_joint_t320")
    features = expected["image_features"]
    R, N = features.shape[:2]
    result = prune("divprune", PruneInputs(features=features, rows_per_image=(R,)), 64)
    (joint,) = result.extra["image_picks"]
    assert torch.equal(joint, expected["select_idx"][0])
    flat = torch.zeros(R * N, dtype=torch.bool)
    flat[joint] = True
    assert torch.equal(result.keep_mask, flat.reshape(R, N))
    assert result.quotas.tolist() == result.keep_mask.sum(1).tolist()
    per_row = prune("divprune", PruneInputs(features=features, rows_per_image=(R,)), 64, scope="per_row")
    assert per_row.quotas.tolist() == [64] * R and not torch.equal(per_row.keep_mask, result.keep_mask)


def test_cdpruner_relevance_is_normalised_over_all_crops():
    _, expected, got = load_case("cdpruner_anyres_t64")
    relevance = got["relevance"]  # (5, 576)
    assert float(relevance.min()) < 1e-4 and abs(float(relevance.max()) - 1.0) < 1e-4  # 0 to 1 over the image
    row_lo, row_hi = relevance.amin(-1), relevance.amax(-1)
    assert float(row_lo.max()) > 1e-3 or float(row_hi.min()) < 1.0 - 1e-3  # not every row spans 0 to 1 itself
    assert got["select_idx"].shape == (5, 64) and got["keep_mask"].sum(1).tolist() == [64] * 5


@pytest.mark.parametrize("name", ["divprune_single_t64", "divprune_anyres_joint_t320", "cdpruner_single_t64",
                                  "cdpruner_anyres_t64"])
def test_compare_case_detects_a_perturbed_expectation(name):
    settings, expected, got = load_case(name)
    assert compare_case(expected, got) == []
    wrong = dict(expected)
    picks = expected["select_idx"].clone()
    picks[-1, [5, 6]] = picks[-1, [6, 5]]  # the same set, another order
    wrong["select_idx"] = picks
    problems = compare_case(wrong, got)
    assert any("select_idx" in p for p in problems)
    wrong = dict(expected)
    wrong["select_idx"] = expected["select_idx"][:, :-1].clone()  # a prefix still compares, a changed pick does not
    assert compare_case(wrong, got) == []
    wrong["select_idx"][0, -1] = (int(wrong["select_idx"][0, -1]) + 1) % expected["image_features"].shape[1]
    assert any("select_idx" in p for p in compare_case(wrong, got))
    if settings["track"] == "cdpruner":
        wrong = dict(expected)
        wrong["relevance"] = expected["relevance"] + 2e-5
        wrong["keep_mask"] = expected["keep_mask"].clone()
        wrong["keep_mask"][0, 0] = ~wrong["keep_mask"][0, 0]
        problems = compare_case(wrong, got)
        assert any("relevance" in p for p in problems) and any("keep_mask" in p for p in problems)
        within = dict(expected, relevance=expected["relevance"] + 5e-6)
        assert compare_case(within, got) == []


def test_baseline_cli_writes_the_outputs(tmp_path):
    case = BASELINES / "cdpruner_single_t64"
    out = tmp_path / "out.safetensors"
    subprocess.run([sys.executable, "-m", "eadp_lab.reference", "run", f"{case}.json", f"{case}.safetensors", str(out)],
                   capture_output=True, text=True, check=True)
    assert set(load_file(out)) == OUTPUTS["cdpruner"]
    assert compare_case(load_file(f"{case}.safetensors"), load_file(out)) == []


@pytest.mark.parametrize("change, match", [
    ({"budgt": 64}, "budgt"), ({"scope": "crop"}, "scope"), ({"rows": 2}, "rows"), ({"grid": [20, 20]}, "grid"),
    ({"track": "divprun"}, "track"),
])
def test_bad_baseline_settings_are_errors(change, match):
    settings = json.loads((BASELINES / "divprune_single_t64.json").read_text())
    tensors = load_file(BASELINES / "divprune_single_t64.safetensors")
    with pytest.raises(ValueError, match=match):
        run_case({**settings, **change}, {k: v for k, v in tensors.items() if k in INPUT_NAMES})
    with pytest.raises(ValueError, match="lack"):
        run_case(json.loads((BASELINES / "cdpruner_single_t64.json").read_text()),
                 {"image_features": tensors["image_features"]})


# ---------------------------------------------------------------- the command's bad inputs


def _cli_error(capsys, argv) -> str:
    """The one-line message ``python -m eadp_lab.reference ARGV`` exits with (exit code 2)."""
    from eadp_lab.reference import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m eadp_lab.reference: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", ["run", "check"])
def test_cli_refuses_settings_that_are_not_json(tmp_path, capsys, command):
    case = HERE / "reference" / "llava15_t64"
    bad = tmp_path / "settings.json"
    bad.write_text("{track: llava")  # not JSON
    extra = [str(tmp_path / "out.safetensors")] if command == "run" else []
    err = _cli_error(capsys, [command, str(bad), f"{case}.safetensors", *extra])
    assert str(bad) in err and "not JSON" in err
    bad.write_text("[1, 2]")  # JSON, but not an object
    assert "JSON object" in _cli_error(capsys, [command, str(bad), f"{case}.safetensors", *extra])
    missing = tmp_path / "missing.json"
    assert str(missing) in _cli_error(capsys, [command, str(missing), f"{case}.safetensors", *extra])
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("command", ["run", "check"])
def test_cli_refuses_inputs_that_are_not_safetensors(tmp_path, capsys, command):
    case = HERE / "reference" / "llava15_t64"
    junk = tmp_path / "inputs.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    extra = [str(tmp_path / "out.safetensors")] if command == "run" else []
    err = _cli_error(capsys, [command, f"{case}.json", str(junk), *extra])
    assert str(junk) in err and "safetensors" in err
    missing = tmp_path / "missing.safetensors"
    assert str(missing) in _cli_error(capsys, [command, f"{case}.json", str(missing), *extra])


def test_cli_names_the_settings_file_of_a_case_it_cannot_run(tmp_path, capsys):
    case = HERE / "reference" / "llava15_t64"
    settings = tmp_path / "typo.json"
    settings.write_text(json.dumps({**json.loads(Path(f"{case}.json").read_text()), "entropy_keep_ration": 0.3}))
    err = _cli_error(capsys, ["check", str(settings), f"{case}.safetensors"])
    assert str(settings) in err and "entropy_keep_ration" in err


def test_cli_checks_the_output_path_before_running(tmp_path, capsys, monkeypatch):
    from eadp_lab import reference

    monkeypatch.setattr(reference, "run_case", lambda *a: pytest.fail("ran the case before checking the output"))
    case = HERE / "reference" / "llava15_t64"
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (tmp_path, blocker / "out.safetensors"):  # a folder; a folder that is a file
        err = _cli_error(capsys, ["run", f"{case}.json", f"{case}.safetensors", str(out)])
        assert str(out) in err


def test_cli_writes_atomically_through_a_unique_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    from eadp_lab.reference import main

    case = BASELINES / "divprune_single_t64"
    out = tmp_path / "new" / "out.safetensors"  # its folder is made
    written = []
    real = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", lambda t, p, *a, **k: (written.append(p), real(t, p, *a, **k)))
    assert main(["run", f"{case}.json", f"{case}.safetensors", str(out)]) == 0
    (tmp,) = written
    assert Path(tmp).parent == out.parent and Path(tmp).name != out.name + ".tmp" and not Path(tmp).exists()
    assert os.listdir(out.parent) == ["out.safetensors"]
    assert compare_case(load_file(f"{case}.safetensors"), load_file(out)) == []
