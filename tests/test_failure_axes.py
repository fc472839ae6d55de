"""The failure-axes study: verbose instructions the lab models can read, the verdict logic on hand-made
numbers, the mechanism figures, and the command's JSON."""

import json
import math

import pytest

from eadp_lab import failure_axes as fa
from eadp_lab.__main__ import main as eadp_main
from eadp_lab.paths import ROOT
from eadp_lab.world import WorldConfig, sample, vocabulary
from eadp_lab.world.config import MAX_VERBOSITY
from eadp_lab.world.questions import VERBOSE_CLOSINGS, VERBOSE_OPENINGS

# ---------------------------------------------------------------- verbosity stays in the lab models' language


@pytest.fixture(scope="module")
def most_verbose():
    return sample("heldout", 400, seed=11, grid=None, config=WorldConfig(verbosity=MAX_VERBOSITY))


def _tokenizer(name):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ROOT / "data" / "models" / name / "tokenizer.json"))


def test_filler_words_are_in_both_lab_tokenizers_and_name_nothing():
    words = {w for clause in VERBOSE_OPENINGS + VERBOSE_CLOSINGS for w in clause.split()}
    for name in ("lab-clip", "lab-llava"):
        vocab = _tokenizer(name).get_vocab()
        assert words <= set(vocab), words - set(vocab)
    kinds = {vocabulary()[w] for w in words}
    assert kinds <= {"function", "noun", "punctuation"}, kinds
    assert not words & {",", "object", "objects", "thing", "things", "yes", "no", "not", "count", "many", "there"}


def test_the_most_verbose_instructions_fit_the_lab_clip(most_verbose):
    clip = _tokenizer("lab-clip")
    positions = json.loads((ROOT / "data" / "models" / "lab-clip" / "config.json").read_text())[
        "text_config"]["max_position_embeddings"]
    unk = clip.token_to_id("<unk>")
    lengths = []
    for r in most_verbose:
        ids = clip.encode(r.question.text).ids  # <s> ... </s>
        assert unk not in ids, r.question.text
        lengths.append(len(ids))
    assert max(lengths) <= positions == 64
    plain = sample("heldout", 400, seed=11, grid=None)
    # longer and denser: more words, a smaller share of them naming anything
    named = lambda rs: sum(bool(ref) for r in rs for ref in r.question.refs) / sum(
        len(r.question.tokens) for r in rs)
    assert min(len(v.question.tokens) - len(p.question.tokens) for v, p in zip(most_verbose, plain)) >= 9
    assert named(most_verbose) < 0.6 * named(plain)


def test_verbose_referents_stay_aligned(most_verbose):
    from eadp_lab.guidance import named_objects

    plain = sample("heldout", 400, seed=11, grid=None)
    for v, p in zip(most_verbose, plain):
        assert len(v.question.refs) == len(v.question.tokens)
        assert named_objects(v.question) == named_objects(p.question)
        assert [(w, r) for w, r in zip(v.question.tokens, v.question.refs) if r] == \
               [(w, r) for w, r in zip(p.question.tokens, p.question.refs) if r]


def test_axis_worlds_start_from_the_default():
    assert fa.axis_config({"verbosity": 0}) == WorldConfig()
    assert fa.axis_config(fa.DEFAULT_SIZES) == WorldConfig()
    assert fa.axis_config({"n_objects": [3, 7]}) == WorldConfig()
    for mode in fa.MODES.values():
        assert len(mode.values) >= 3
        assert WorldConfig() in [fa.axis_config(v) for v in mode.values]


# ---------------------------------------------------------------- numbers

def test_paired_mean_and_interval():
    a, b, d, se, n = fa.paired_mean([1.0, 0.5, math.nan, 1.0], [0.0, 0.5, 1.0, 0.5])
    assert (a, b, n) == (2.5 / 3, 1.0 / 3, 3) and d == pytest.approx(0.5)
    assert se == pytest.approx(math.sqrt(((0.5) ** 2 + 0.5 ** 2 + 0) / 2 / 3))
    assert fa.interval(0.1, 0.05) == [0.002, 0.198]
    assert fa.paired_mean([], []) [4] == 0


def test_mechanism_figure_pairs_the_rows_of_named_questions():
    rows = [{"words": 10, "objects": 4, "named": 1, "patches": 4.0, "chance": 0.02, "global": 0.25, "filtered": 0.5,
             "every_word": 0.5, "reached/eadp/14": 1.0, "reached/eadp-topk/14": 0.5,
             "reached/eadp/28": 1.0, "reached/eadp-topk/28": 1.0},
            {"words": 12, "objects": 6, "named": 2, "patches": 8.0, "chance": 0.04, "global": 0.5, "filtered": 0.5,
             "every_word": 0.25, "reached/eadp/14": 1.0, "reached/eadp-topk/14": 0.5,
             "reached/eadp/28": 1.0, "reached/eadp-topk/28": 0.5},
            {"words": 5, "objects": 3, "named": 0}]  # an absent object: no mechanism row
    g = fa.mechanism_figure(rows, fa.MODES["global_guidance"], [28, 14])
    assert (g["eadp"], g["eadp-global"], g["difference"], g["n"], g["budget"]) == (0.5, 0.375, 0.125, 2, None)
    assert g["context"] == {"objects": 4.3333, "words": 9.0, "patches": 6.0} and g["chance"] == 0.03
    t = fa.mechanism_figure(rows, fa.MODES["topk_redundancy"], [28, 14])
    assert (t["eadp"], t["eadp-topk"], t["difference"], t["budget"]) == (1.0, 0.5, 0.5, 14)
    n = fa.mechanism_figure(rows, fa.MODES["textual_noise"], [28])
    assert n["difference"] == 0.125
    empty = fa.mechanism_figure(rows[2:], fa.MODES["textual_noise"], [28])
    assert empty["difference"] is None and empty["n"] == 0


def test_point_takes_paired_differences_from_the_hits():
    mode = fa.MODES["textual_noise"]
    runs = {("eadp", 14): {"accuracy": 0.75, "hits": "1101"}, ("eadp-noentropy", 14): {"accuracy": 0.25, "hits": "1000"}}
    p = fa.point({"verbosity": 2}, mode, {"difference": 0.1}, {"accuracy": 0.9}, runs, [14])
    assert set(p) == {"value", "mechanism", "full_accuracy", "accuracy", "difference", "interval"}
    assert p["value"] == {"verbosity": 2} and p["full_accuracy"] == 0.9
    assert p["accuracy"] == {"eadp": {"14": 0.75}, "eadp-noentropy": {"14": 0.25}}
    assert p["difference"] == {"14": 0.5}
    low, high = p["interval"]["14"]
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * 0.5 / 2 * math.sqrt(4 / 3), abs=1e-3)


# ---------------------------------------------------------------- verdicts on hand-made numbers

def _point(diffs: dict, se: float = 0.01, full: float = 0.9, mech: float | None = 0.05):
    return {"value": {}, "full_accuracy": full,
            "mechanism": {"difference": mech, "interval": None if mech is None else [mech - 0.01, mech + 0.01]},
            "difference": {str(b): d for b, d in diffs.items()},
            "interval": {str(b): [round(d - 1.96 * se, 4), round(d + 1.96 * se, 4)] for b, d in diffs.items()}}


MODE = fa.Mode("verbosity", ("eadp", "eadp-noentropy"), ({"verbosity": 0}, {"verbosity": 3}, {"verbosity": 6}),
               ("filtered", "every_word"), "test")


def test_slope_weighs_the_points_by_their_precision():
    assert fa.slope([0.0, 0.1, 0.2], [0.01, 0.01, 0.01]) == (pytest.approx(0.1), pytest.approx(0.01 / math.sqrt(2)))
    rate, _ = fa.slope([0.0, 0.5, 0.2], [0.01, 1.0, 0.01])  # the imprecise middle point barely counts
    assert rate == pytest.approx(0.1, abs=1e-3)
    assert fa.slope([0.1, 0.1, 0.1], [0.0, 0.0, 0.0])[0] == pytest.approx(0.0)


def test_a_mode_that_grows_and_clears_zero_appears():
    points = [_point({28: 0.0, 14: 0.01}), _point({28: 0.01, 14: 0.03}), _point({28: 0.002, 14: 0.08}, mech=0.2)]
    assert fa.trend(points, 14)["status"] == "appears" and fa.trend(points, 14)["grows"]
    assert fa.trend(points, 28)["status"] == "absent"
    text = fa.verdict("textual_noise", MODE, points, [28, 14])
    assert text.startswith("textual_noise: the mode appears along verbosity at budget 14, not at 28.")
    assert "from +1.0 points" in text and "to +8.0" in text and "verbosity=6" in text
    assert "(trend +3.5 +/- 1.4 points per step): the mode appears." in text
    assert "+0.050 -> +0.200 (toward the failure" in text and "Unpruned accuracy: 90.0% -> 90.0% -> 90.0%." in text
    assert "training distribution" not in text


def test_a_mode_that_does_not_appear_says_so_plainly():
    points = [_point({28: 0.0}), _point({28: 0.005}), _point({28: 0.004}, mech=0.01)]
    t = fa.trend(points, 28)
    assert t["status"] == "absent" and not t["grows"] and t["far"][0] < 0 < t["far"][1]
    text = fa.verdict("textual_noise", MODE, points, [28])
    assert text.startswith("textual_noise: the mode does not appear along verbosity at any budget measured.")
    assert "the mode does not appear." in text and "away from the failure" in text


def test_gaps_that_do_not_grow_reversals_and_far_end_gaps():
    flat = [_point({14: 0.05}), _point({14: 0.05}), _point({14: 0.05})]
    assert fa.trend(flat, 14)["status"] == "all along"
    text = fa.verdict("m", MODE, flat, [14])
    assert text.startswith("m: the mode does not appear along verbosity: at budget 14 eadp beats eadp-noentropy all "
                           "along the axis, and the axis does not make the gap grow.")
    assert "not switched on by this setting" in text
    reversed_ = [_point({14: 0.0}), _point({14: -0.02}), _point({14: -0.06})]
    assert fa.trend(reversed_, 14)["status"] == "reversed"
    far_only = [_point({14: 0.0}, se=0.02), _point({14: 0.03}), _point({14: 0.04}, se=0.01)]
    t = fa.trend(far_only, 14)
    assert t["status"] == "far end only" and not t["grows"]  # slope 0.0167 +/- 1.96 * 0.01
    assert fa.verdict("m", MODE, far_only, [14]).startswith("m: the mode does not appear")


def test_a_falling_unpruned_model_is_named():
    points = [_point({14: 0.0}, full=0.9), _point({14: 0.05}, full=0.8), _point({14: 0.1}, full=0.6)]
    text = fa.verdict("m", MODE, points, [14])
    assert "loses 30.0 points along the axis" in text and "training distribution" in text
    assert "mode appears" in text  # said, with the caveat beside it


# ---------------------------------------------------------------- the command

def test_a_bad_json_path_stops_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fa, "failure_axes", lambda *a, **k: pytest.fail("the study ran"))
    assert eadp_main(["study", "failure-axes", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eadp_main(["study", "failure-axes", "--seed", "-1", "--json", str(tmp_path / "x.json")])
    assert eadp_main(["study", "nothing"]) == 2


@pytest.mark.slow
def test_the_command_writes_every_mode_at_every_axis_value(tmp_path):
    out = tmp_path / "axes.json"
    argv = ["study", "failure-axes", "--seed", "3", "--questions", "8", "--budgets", "14", "--threads", "1",
            "--no-progress", "--json", str(out)]
    assert eadp_main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"seed", "questions", "modes"} and (report["seed"], report["questions"]) == (3, 8)
    assert set(report["modes"]) == {"global_guidance", "textual_noise", "topk_redundancy"}
    for name, mode in report["modes"].items():
        spec = fa.MODES[name]
        assert set(mode) == {"axis", "rules", "points", "verdict", "mechanism_name", "seconds", "command"}
        assert mode["rules"] == list(spec.rules) and mode["axis"] == spec.axis
        assert mode["command"].endswith("--json " + str(out)) and mode["verdict"].startswith(name + ": the mode ")
        assert len(mode["points"]) == len(spec.values) >= 3
        for p, value in zip(mode["points"], spec.values):
            assert set(p) == {"value", "mechanism", "full_accuracy", "accuracy", "difference", "interval"}
            assert fa.axis_config(p["value"]) == fa.axis_config(value)
            assert 0 <= p["full_accuracy"] <= 1
            assert set(p["accuracy"]) == set(spec.rules) and all(set(v) == {"14"} for v in p["accuracy"].values())
            assert p["difference"]["14"] == pytest.approx(
                p["accuracy"][spec.rules[0]]["14"] - p["accuracy"][spec.rules[1]]["14"], abs=1e-3)
            low, high = p["interval"]["14"]
            assert low <= p["difference"]["14"] <= high
            assert {spec.rules[0], spec.rules[1], "difference", "n", "context"} <= set(p["mechanism"])
    # one world, one set of questions: the default world's unpruned accuracy is the same in every mode
    defaults = {m["points"][[fa.axis_config(v) for v in fa.MODES[n].values].index(WorldConfig())]["full_accuracy"]
                for n, m in report["modes"].items()}
    assert len(defaults) == 1


# ---------------------------------------------------------------- reading a study (chapter 01)

@pytest.fixture(scope="module")
def shipped():
    return fa.load_study()


def test_the_shipped_study_loads_into_one_tidy_frame(shipped):
    assert set(shipped["modes"]) == set(fa.MODES) and shipped["questions"] >= 1000
    frame = fa.study_frame(shipped)
    assert len(frame) == sum(len(m["points"]) * len(m["points"][0]["difference"]) for m in shipped["modes"].values())
    assert set(frame.budget) == {28, 14}
    # the accuracy effect is the rule's accuracy minus the ablation's, inside its interval
    assert (frame.difference - (frame.rule_accuracy - frame.ablation_accuracy)).abs().max() < 2e-3
    assert ((frame.low <= frame.difference) & (frame.difference <= frame.high)).all()
    assert frame.full_accuracy.between(0, 1).all()
    guidance, topk = frame[frame["mode"] != "topk_redundancy"], frame[frame["mode"] == "topk_redundancy"]
    assert guidance.mechanism_budget.isna().all() and (topk.mechanism_budget == 14).all()
    assert list(frame[(frame["mode"] == "global_guidance") & (frame.budget == 28)].setting) == ["2-3", "3-7", "6-8", "9-10"]
    assert frame[frame["mode"] == "topk_redundancy"].setting.iloc[-1] == "0/0/100 x1.25"
    assert frame[frame["mode"] == "textual_noise"].tick.iloc[0] == "0\n(10.2 words)"


def test_study_glue_quotes_the_verdicts_and_both_ends(shipped):
    values = fa.study_glue(shipped)
    for name, key in fa.SHORT.items():
        assert values[f"{key}_verdict"] == shipped["modes"][name]["verdict"]
        assert values[f"{key}_verdict"].startswith(name + ": " + values[f"{key}_headline"])
        for end in ("first", "last"):
            assert values[f"{key}_{end}_effect_14"].endswith("]") and " points [" in values[f"{key}_{end}_effect_14"]
            assert 0 <= values[f"{key}_{end}_full"] <= 1
    assert values["topk_headline"].startswith("the mode appears")
    assert values["global_first_effect_28"] == "+4.1 points [+2.2, +6.0]"  # the shipped run's figures
    assert values["noise_drop"] == pytest.approx(0.924 - 0.867)
    # the default world is on every axis: its mechanism is quoted the same in the two guidance modes
    assert values["global_default_mech_rule"] == values["noise_default_mech_rule"] == values["noise_first_mech_rule"]
    assert fa.points_text(0.041, 0.0223, 0.0597) == "+4.1 points [+2.2, +6.0]"
    assert fa.points_text(-0.007, -0.065, 0.05) == "-0.7 points [-6.5, +5.0]"
    assert fa.headline("m: the mode appears along x at budget 28, not at 14. At budget 28, ...") == \
        "the mode appears along x at budget 28, not at 14."


def test_a_broken_study_is_named(tmp_path, shipped):
    bad = json.loads(json.dumps(shipped))
    del bad["modes"]["textual_noise"]["points"][1]["interval"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="bad.json.*textual_noise"):
        fa.load_study(path)
    path.write_text(json.dumps({"seed": 1}))
    with pytest.raises(ValueError, match="not a failure-axes study"):
        fa.load_study(path)


def test_plot_mode_keeps_its_legends_off_the_curves(shipped):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = fa.study_frame(shipped)
    for name in fa.MODES:
        fig = fa.plot_mode(frame, name)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert len(fig.axes) == 3
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None and legend.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0
            assert all("$" not in t.get_text() for t in ax.get_xticklabels())
        assert "points" in fig.axes[1].get_ylabel()
        plt.close(fig)
    with pytest.raises(ValueError, match="no mode"):
        fa.plot_mode(frame, "nothing")


def test_long_run_gaps_pair_the_shipped_accuracy_run():
    gaps = fa.long_run_gaps(budget=14)
    assert list(gaps.index) == list(fa.MODES)
    # chapter 04's ablations at 14 tokens: global -4.2, no entropy -1.5, Top-K -33.4 points against eadp
    assert gaps.loc["global_guidance", "difference"] == pytest.approx(0.0425, abs=1e-3)
    assert gaps.loc["textual_noise", "difference"] == pytest.approx(0.0155, abs=1e-3)
    assert gaps.loc["topk_redundancy", "difference"] == pytest.approx(0.3345, abs=1e-3)
    assert (gaps.low < gaps.difference).all() and (gaps.difference < gaps.high).all() and (gaps.n == 2000).all()
    assert gaps.loc["topk_redundancy", "reached_ablation"] > gaps.loc["topk_redundancy", "reached_rule"]


def test_filter_coverage_counts_the_content_words_the_filter_keeps():
    import pandas as pd

    from eadp_lab.studies import GUIDANCE_LABELS, FailureStudy

    words = pd.DataFrame([
        {"record": 0, "token": "red", "group": "content", "kept_by_filter": True},
        {"record": 0, "token": "star", "group": "content", "kept_by_filter": False},
        {"record": 0, "token": "the", "group": "function", "kept_by_filter": False},
        {"record": 0, "token": "?", "group": "punctuation", "kept_by_filter": True},
        {"record": 1, "token": "the", "group": "function", "kept_by_filter": True},
        {"record": 1, "token": "cross", "group": "content", "kept_by_filter": False},
        {"record": 2, "token": "blue", "group": "content", "kept_by_filter": True}])
    maps = pd.DataFrame([{"record": r, "guidance": g, "top_share": v}
                         for r, shares in ((0, (0.1, 0.5, 0.25)), (1, (0.2, 0.4, 0.0)), (2, (0.3, 0.6, 0.6)))
                         for g, v in zip(GUIDANCE_LABELS, shares)])
    per = FailureStudy(maps, pd.DataFrame(), words).filter_coverage()
    assert list(per.words) == [4, 2, 1] and list(per.content) == [2, 1, 1] and list(per.kept) == [2, 1, 1]
    assert list(per.content_kept) == [1, 0, 1] and list(per.keeps_all_content) == [False, False, True]
    assert list(per.filtered) == [0.25, 0.0, 0.6] and list(per.every_word) == [0.5, 0.4, 0.6]


def test_mechanism_table_sets_each_mode_beside_its_accuracy(shipped):
    table = fa.mechanism_table(shipped, fa.long_run_gaps(budget=14))
    assert list(table.index) == list(fa.MODES) and list(table.ablation) == ["eadp-global", "eadp-noentropy", "eadp-topk"]
    assert table.loc["topk_redundancy", "mechanism (eadp / ablation)"].endswith("72.4% / 84.2%")
    assert table.loc["global_guidance", "long run: effect at 14 (points)"] == "+4.2 [+2.6, +5.9]"
    assert fa.default_point(shipped["modes"]["global_guidance"])["value"] == {"n_objects": [3, 7]}


def test_a_second_seed_is_shipped_and_shown_beside_the_first(shipped):
    second = fa.load_study(fa.shipped(fa.SECOND))
    assert (second["seed"], second["questions"]) == (9001, 1000) and set(second["modes"]) == set(fa.MODES)
    table = fa.seed_table([shipped, second])
    assert len(table) == 6 and list(table.index.get_level_values(0)[:2]) == ["global_guidance"] * 2
    assert list(table.loc["global_guidance"].index) == [4242, 9001]
    assert table.loc[("topk_redundancy", 4242), "verdict"].startswith("the mode appears")
    assert table.loc[("global_guidance", 4242), "28 tokens, first -> last value (points)"] == \
        "+4.1 [+2.2, +6.0] -> +2.1 [+0.1, +4.1]"
    assert fa.same_verdicts([shipped, second]) == {name: True for name in fa.MODES}
    flipped = json.loads(json.dumps(second))
    flipped["modes"]["topk_redundancy"]["verdict"] = "topk_redundancy: the mode appears along x at budgets 28, 14. At budget 28"
    assert fa.same_verdicts([shipped, flipped])["topk_redundancy"] is False
