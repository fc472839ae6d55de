"""Every setting is checked where it is made: one clear line naming the field, the bad value and what
is allowed, whether the settings come from their constructor, a preset, ``replace`` or ``prune``'s
overrides (and :func:`eadp_lab.attach` checks them when attaching, see ``test_attach``)."""

import math
import re

import numpy as np
import pytest
import torch

from eadp_lab import EADPConfig, PruneInputs, preset, prune
from eadp_lab.config import PRESETS
from eadp_lab.methods import METHODS
from eadp_lab.methods.cdpruner import CDPrunerSettings
from eadp_lab.methods.divprune import DivPruneSettings
from eadp_lab.methods.eadp import TopKSettings
from eadp_lab.methods.random import RandomSettings
from eadp_lab.methods.settings import DEFAULT_PRESETS, default_settings, method_names, method_settings

NUMBER = r"a finite real number"
RATIO = r"a real number in \(0, 1\]"
BAD_EADP = [
    ("alpha", "0.5", r"a real number in \[0, 1\]"), ("alpha", True, r"a real number in \[0, 1\]"),
    ("alpha", math.nan, r"a real number in \[0, 1\]"), ("alpha", 1.5, r"a real number in \[0, 1\]"),
    ("alpha", -0.1, r"a real number in \[0, 1\]"), ("alpha", None, r"a real number in \[0, 1\]"),
    ("similarity_sign", 0, "-1 or 1"), ("similarity_sign", 0.5, "-1 or 1"), ("similarity_sign", True, "-1 or 1"),
    ("similarity_sign", "-1", "-1 or 1"), ("similarity_sign", math.nan, "-1 or 1"),
    ("entropy_temperature", 0.0, NUMBER + " > 0"), ("entropy_temperature", -1, NUMBER + " > 0"),
    ("entropy_temperature", math.nan, NUMBER + " > 0"), ("entropy_temperature", math.inf, NUMBER + " > 0"),
    ("entropy_temperature", "100", NUMBER + " > 0"),
    ("entropy_keep_ratio", 0.0, RATIO), ("entropy_keep_ratio", 1.5, RATIO), ("entropy_keep_ratio", math.nan, RATIO),
    ("aggregation", "max", "one of"), ("aggregation", None, "one of"), ("aggregation", ["mean"], "one of"),
    ("aggregation_temperature", 0.0, NUMBER + " > 0"), ("aggregation_temperature", math.nan, NUMBER + " > 0"),
    ("aggregation_temperature", math.inf, NUMBER + " > 0"),
    ("aggregation_top_k", -2, "an integer >= 1"), ("aggregation_top_k", 0, "an integer >= 1"),
    ("aggregation_top_k", 2.5, "an integer >= 1"), ("aggregation_top_k", True, "an integer >= 1"),
    ("aggregation_top_k", "5", "an integer >= 1"),
    ("normalisation", "joint", "one of"),
    ("smoothing_kernel", 4, "an odd integer >= 1"), ("smoothing_kernel", 3.5, "an odd integer >= 1"),
    ("smoothing_kernel", 3.0, "an odd integer >= 1"), ("smoothing_kernel", 0, "an odd integer >= 1"),
    ("smoothing_kernel", -3, "an odd integer >= 1"), ("smoothing_kernel", True, "an odd integer >= 1"),
    ("smoothing_kernel", "3", "an odd integer >= 1"),
    ("smoothing_sigma", 0.0, NUMBER + " > 0"), ("smoothing_sigma", -1.0, NUMBER + " > 0"),
    ("smoothing_sigma", math.nan, NUMBER + " > 0"), ("smoothing_sigma", math.inf, NUMBER + " > 0"),
    ("on_grid_mismatch", "ignore", "one of"),
    ("beta", math.inf, NUMBER + " > 0"), ("beta", 0.0, NUMBER + " > 0"), ("beta", -1, NUMBER + " > 0"),
    ("beta", math.nan, NUMBER + " > 0"), ("beta", "2", NUMBER + " > 0"),
    ("selection", "greedy", "one of"), ("allocation", "proportional", "one of"), ("text_positions", "some", "one of"),
]


def sample(seed=0, N=64, L=5, C=12, D=16):
    g = torch.Generator().manual_seed(seed)
    return PruneInputs(features=torch.randn(1, N, D, generator=g), image_embeds=torch.randn(1, N, C, generator=g),
                       text_embeds_seq=torch.randn(1, 1, L, C, generator=g))


def raises(make, field, value, allowed):
    """``make()`` raises one line: ``<field> must be <allowed>, got <value!r>``."""
    with pytest.raises(ValueError, match=rf"^{field} must be {allowed}.*, got {re.escape(repr(value))}") as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value, allowed", BAD_EADP, ids=[f"{f}={v!r}" for f, v, _ in BAD_EADP])
def test_every_eadp_field_is_checked_on_every_path_that_makes_settings(field, value, allowed):
    change = {field: value}
    raises(lambda: EADPConfig(**change), field, value, allowed)
    raises(lambda: preset("llava-1.5", **change), field, value, allowed)
    raises(lambda: preset("paper").replace(**change), field, value, allowed)
    raises(lambda: EADPConfig.from_dict({**EADPConfig().to_dict(), **change}), field, value, allowed)
    raises(lambda: prune("eadp", sample(), 8, **change), field, value, allowed)  # before any scoring


def test_beta_inf_and_a_nan_temperature_no_longer_reach_the_scores():
    """beta=inf made every importance 0 (the first tokens were kept); a NaN temperature was blamed on
    "importance". Both are now refused by name."""
    with pytest.raises(ValueError, match="^beta "):
        prune("eadp", sample(), 8, beta=math.inf)
    with pytest.raises(ValueError, match="^entropy_temperature "):
        prune("eadp", sample(), 8, entropy_temperature=math.nan)


@pytest.mark.parametrize("change", [dict(alpha=0), dict(alpha=1), dict(alpha=np.float32(0.25)), dict(similarity_sign=1),
                                    dict(similarity_sign=-1), dict(similarity_sign=1.0), dict(smoothing_kernel=1),
                                    dict(smoothing_kernel=np.int64(5)), dict(aggregation_top_k=1), dict(beta=0.25),
                                    dict(entropy_temperature=1), dict(entropy_keep_ratio=1), dict(beta=4)])
def test_good_values_are_kept_as_given(change):
    config = EADPConfig(**change)
    assert all(getattr(config, k) == v for k, v in change.items())


BAD_BASELINES = [
    (TopKSettings, "similarity_sign", 0, "-1 or 1"), (TopKSettings, "similarity_sign", "1", "-1 or 1"),
    (CDPrunerSettings, "similarity_sign", 2.0, "-1 or 1"), (CDPrunerSettings, "epsilon", -1e-10, NUMBER + " > 0"),
    (CDPrunerSettings, "epsilon", 0.0, NUMBER + " > 0"), (CDPrunerSettings, "epsilon", math.nan, NUMBER + " > 0"),
    (CDPrunerSettings, "epsilon", "1e-10", NUMBER + " > 0"), (CDPrunerSettings, "normalisation", "joint", "one of"),
    (CDPrunerSettings, "precision", "float16", "one of"), (DivPruneSettings, "scope", "per_crop", "one of"),
    (DivPruneSettings, "precision", None, "one of"), (RandomSettings, "seed", 1.5, "an integer"),
    (RandomSettings, "seed", "0", "an integer"), (RandomSettings, "seed", True, "an integer"),
    (RandomSettings, "seed", 2**64, "an integer"),
]


@pytest.mark.parametrize("cls, field, value, allowed", BAD_BASELINES,
                         ids=[f"{c.__name__}.{f}={v!r}" for c, f, v, _ in BAD_BASELINES])
def test_every_baseline_field_is_checked(cls, field, value, allowed):
    raises(lambda: cls(**{field: value}), field, value, allowed)
    method = {TopKSettings: "topk", CDPrunerSettings: "cdpruner", DivPruneSettings: "divprune",
              RandomSettings: "random"}[cls]
    raises(lambda: prune(method, sample(), 8, **{field: value}), field, value, allowed)


@pytest.mark.parametrize("method, path", [("eadp", "prune"), ("topk", "prune"), ("pool", "prune"), ("none", "prune"),
                                          ("eadp", "preset"), ("eadp", "replace")])
def test_an_unknown_override_names_it_and_lists_the_known_ones(method, path):
    known = [f for f in METHODS[method].settings.__dataclass_fields__]
    make = {"prune": lambda: prune(method, sample(), 8, alpah=0.3),
            "preset": lambda: preset("llava-1.5", alpah=0.3),
            "replace": lambda: EADPConfig().replace(alpah=0.3)}[path]
    with pytest.raises(ValueError, match=rf"^unknown {method} setting 'alpah'; known: ") as error:
        make()
    message = str(error.value)
    assert all(repr(k) in message for k in known) and "\n" not in message
    if not known:
        assert f"{method} takes no settings" in message


@pytest.mark.parametrize("grid, match", [((-4, -4), r"^grid must be .*, got \(-4, -4\)"),
                                         ((4.5, 4), r"^grid must be .*, got \(4.5, 4\)"),
                                         ((16,), r"^grid must be .*, got \(16,\)"),
                                         ([(4, 4), (2, -8)], r"^grid must be .*, got \[\(4, 4\), \(2, -8\)\]"),
                                         ([(3.5, 2), (4, 4)], r"^grid must be .*, got \[\(3.5, 2\), \(4, 4\)\]")])
def test_bad_grids_are_refused_with_the_inputs(grid, match):
    """pool on grid=(-4, -4) (16 tokens) died in torch; a fractional grid was truncated silently."""
    features = torch.randn(len(grid) if isinstance(grid, list) else 1, 16, 8)
    with pytest.raises(ValueError, match=match):
        PruneInputs(features=features, grid=grid)


def test_every_preset_and_every_default_still_constructs():
    for name in PRESETS:
        for faithful in (False, True):
            assert isinstance(preset(name, faithful=faithful), EADPConfig)
    for family, modality in DEFAULT_PRESETS:
        for method in METHODS:
            assert isinstance(default_settings(method, family, modality, sign=1.0), METHODS[method].settings)
    for name in method_names():
        method, settings = method_settings(name, "llava_next", batch_index=3, seed=7)
        assert isinstance(settings, METHODS[method].settings)
