"""Every published test vector is reproduced within its README's tolerances.

The vectors in tests/reference/ were made with the published EADP code (a copy of
shared/reference/). Set EADP_REFERENCE_DIRS=dir1:dir2 to check more vectors in the same format.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from eadp_lab.reference import INPUT_NAMES, compare_case, run_case

HERE = Path(__file__).parent
DIRS = [HERE / "reference"] + [Path(p) for p in os.environ.get("EADP_REFERENCE_DIRS", "").split(":") if p]
CASES = sorted({p for d in DIRS for p in d.glob("*.json")})


def test_vectors_present():
    assert len(CASES) >= 4


@pytest.mark.parametrize("settings_path", CASES, ids=lambda p: p.stem)
def test_case_reproduced(settings_path):
    settings = json.loads(settings_path.read_text())
    expected = load_file(settings_path.with_suffix(".safetensors"))
    inputs = {k: v for k, v in expected.items() if k in INPUT_NAMES}
    got = run_case(settings, inputs)
    assert compare_case(expected, got) == []
    # the outputs the format asks for, and no more
    track_outputs = {"token_quotas", "keep_mask"} if settings.get("track", "llava") == "llava" else {"pruned_features"}
    assert set(got) == {"importance", "select_idx"} | track_outputs


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
