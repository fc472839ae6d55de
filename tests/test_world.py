"""The lab world: determinism, splits, answers re-derived from the scene, grounding, crops, clips.

Answers are checked by a small interpreter written here, from the question *text* and the
scene description; it shares no code with the generator (its word lists and relation
semantics are its own: plain centre comparisons).
"""

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eadp_lab.world import (
    SPLITS,
    Caption,
    Clip,
    Question,
    Scene,
    WorldConfig,
    ask,
    caption,
    coverage_from_labels,
    coverage_on,
    dense_coverage,
    make_record,
    object_phrases,
    patch_coverage,
    patch_masks,
    pointing_hits,
    record_rng,
    render,
    render_clip,
    render_with_labels,
    sample,
    sample_clips,
    sample_multicrop,
    sample_scene,
    token_kind,
    token_masks,
    vocabulary,
)

# ---------------------------------------------------------------- the test's own interpreter

COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "white"}
SHAPE_OF = {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star", "diamond": "diamond",
            "cross": "cross", "circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star",
            "diamonds": "diamond", "crosses": "cross"}
SIZES = {"tiny", "small", "large"}
GENERIC = {"object", "thing", "objects", "things"}
NUMBER = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
REL_PHRASES = sorted([
    (("to", "the", "left", "of"), "left"), (("on", "the", "left", "of"), "left"), (("left", "of"), "left"),
    (("to", "the", "right", "of"), "right"), (("on", "the", "right", "of"), "right"), (("right", "of"), "right"),
    (("above",), "above"), (("below",), "below"), (("under",), "below"), (("beneath",), "below"),
], key=lambda p: -len(p[0]))
MOTION = {
    "moves to the left": "left", "moves left": "left", "is moving to the left": "left",
    "moves to the right": "right", "moves right": "right", "is moving to the right": "right",
    "moves up": "up", "is moving up": "up", "moves upwards": "up",
    "moves down": "down", "is moving down": "down", "moves downwards": "down",
    "does not move": "still", "stays still": "still", "is not moving": "still",
    "enters the scene": "enters", "comes into view": "enters",
    "leaves the scene": "leaves", "goes out of view": "leaves",
    "move to the left": "left", "are moving to the left": "left", "move left": "left",
    "move to the right": "right", "are moving to the right": "right", "move right": "right",
    "move up": "up", "are moving up": "up", "move upwards": "up",
    "move down": "down", "are moving down": "down", "move downwards": "down",
    "do not move": "still", "stay still": "still", "are not moving": "still",
    "move": "moving", "are moving": "moving",
}


def holds(a, b, rel):
    return {"left": a.x < b.x, "right": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}[rel]


def parse_np(tokens, i):
    """``[the|a|an] [size] [colour] (shape | object | thing)`` at ``i`` -> ``(attrs, next)`` or ``None``."""
    if i < len(tokens) and tokens[i] in ("the", "a", "an"):
        i += 1
    attrs = {}
    if i < len(tokens) and tokens[i] in SIZES:
        attrs["size"] = tokens[i]
        i += 1
    if i < len(tokens) and tokens[i] in COLOURS:
        attrs["colour"] = tokens[i]
        i += 1
    if i < len(tokens) and tokens[i] in SHAPE_OF:
        attrs["shape"] = SHAPE_OF[tokens[i]]
        return attrs, i + 1
    if i < len(tokens) and tokens[i] in GENERIC:
        return attrs, i + 1
    return None


def parse_rel(tokens, i):
    for phrase, rel in REL_PHRASES:
        if tuple(tokens[i:i + len(phrase)]) == phrase:
            return rel, i + len(phrase)
    return None


def denote(objects, attrs):
    return [k for k, o in enumerate(objects) if all(getattr(o, a) == v for a, v in attrs.items())]


def the(objects, attrs):
    found = denote(objects, attrs)
    assert len(found) == 1, f"'{attrs}' is not unique: {found}"
    return found[0]


def parse_ref(tokens, i, objects):
    """A definite reference, maybe with a relation to an anchor -> ``(candidates, next)``."""
    attrs, i = parse_np(tokens, i)
    found = denote(objects, attrs)
    rel = parse_rel(tokens, i)
    if rel is not None:
        rel, i = rel
        anchor_attrs, i = parse_np(tokens, i)
        anchor = the(objects, anchor_attrs)
        found = [k for k in found if k != anchor and holds(objects[k], objects[anchor], rel)]
    return found, i


def first_np(tokens, start=0):
    for i in range(start, len(tokens)):
        if tokens[i] in ("the", "a", "an") and parse_np(tokens, i) is not None:
            return i
    raise AssertionError(f"no noun phrase in {' '.join(tokens)!r}")


def check_image_question(scene, q):
    """Recompute ``q``'s answer from its text and the scene; return the object sets its phrases name."""
    t, objects, text = q.tokens, scene.objects, q.text
    assert t[-1] in ("?", ".")
    if text.startswith("how many") or text.startswith("count the") or text.startswith("what is the number of"):
        start = 2 if text.startswith("how many") else (2 if text.startswith("count") else 5)
        attrs, _ = parse_np(t, start)
        found = denote(objects, attrs)
        assert q.answer == NUMBER[len(found)], (text, q.answer, len(found))
        return "count", [found]
    for prefix in ("is there", "do you see", "can you see", "does the image contain", "are there any"):
        if text.startswith(prefix):
            attrs, _ = parse_np(t, len(prefix.split()))
            found = denote(objects, attrs)
            assert q.answer == ("yes" if found else "no"), (text, q.answer, found)
            return "exist", [found]
    asked = next((a for a, words in (("colour", {"colour"}), ("shape", {"shape"}), ("size", {"size", "big"}))
                  if words & set(t)), None)
    if asked is None and "tiny , small or large" in text:
        asked = "size"
    if asked is not None:
        if t[:3] == ["what", asked, "is"] and parse_rel(t, 3) is not None:  # "what shape is left of the X ?"
            rel, i = parse_rel(t, 3)
            anchor = the(objects, parse_np(t, i)[0])
            found = [k for k in range(len(objects)) if k != anchor and holds(objects[k], objects[anchor], rel)]
        else:
            found, _ = parse_ref(t, first_np(t), objects)
        assert len(found) == 1, f"{text!r} does not name exactly one object: {found}"
        assert q.answer == getattr(objects[found[0]], asked), (text, q.answer)
        return asked, [found]
    # relation yes/no: "<frame> the A [located|positioned|appear|is] <relation> the B ?"
    i = first_np(t)
    a_attrs, i = parse_np(t, i)
    while parse_rel(t, i) is None:
        assert t[i] in ("located", "positioned", "appear", "is"), text
        i += 1
    rel, i = parse_rel(t, i)
    b_attrs, _ = parse_np(t, i)
    a, b = the(objects, a_attrs), the(objects, b_attrs)
    assert q.answer == ("yes" if holds(objects[a], objects[b], rel) else "no"), text
    gap = {"left": objects[b].x - objects[a].x, "right": objects[a].x - objects[b].x,
           "above": objects[b].y - objects[a].y, "below": objects[a].y - objects[b].y}[rel]
    assert abs(gap) >= 4.0, f"{text!r}: centres only {gap:.1f} px apart along the relation"
    return "relation", [[a], [b]]


def check_grounding(objects, tokens, refs):
    """Every colour, shape or size word names objects that have it; no other word names any."""
    assert len(refs) == len(tokens)
    for word, r in zip(tokens, refs):
        assert all(0 <= k < len(objects) for k in r)
        if word in COLOURS:
            assert all(objects[k].colour == word for k in r), word
        elif word in SHAPE_OF:
            assert all(objects[k].shape == SHAPE_OF[word] for k in r), word
        elif word in SIZES:
            assert all(objects[k].size == word for k in r), word
        else:
            assert r == (), f"{word!r} should name nothing"


# ---------------------------------------------------------------- shared samples

@pytest.fixture(scope="module")
def records():
    return sample("train", 2000, seed=0)


@pytest.fixture(scope="module")
def clips():
    return sample_clips("train", 240, seed=0)


@pytest.fixture(scope="module")
def multicrops():
    return sample_multicrop("val", 40, seed=0) + sample_multicrop("val", 8, seed=0, layout=(2, 3))


# ---------------------------------------------------------------- determinism and splits

def test_deterministic_for_a_seed():
    a, b = sample("val", 30, seed=7), sample("val", 30, seed=7)
    for x, y in zip(a, b):
        assert x.to_dict() == y.to_dict()
        assert np.array_equal(x.image, y.image) and np.array_equal(x.coverage, y.coverage)
    # a record does not depend on its neighbours, the start, or the number of workers
    c = sample("val", 10, seed=7, start=20, workers=2)
    assert [r.to_dict() for r in c] == [r.to_dict() for r in a[20:]]
    assert sample("val", 5, seed=8)[0].to_dict() != a[0].to_dict()


def scene_key(scene):
    return tuple((round(o.x, 6), round(o.y, 6), round(o.radius, 6), o.shape, o.colour) for o in scene.objects)


def test_splits_never_share_a_scene():
    keys = {split: {scene_key(r.scene) for r in sample(split, 600, seed=0, grid=None)} for split in SPLITS}
    assert all(len(k) == 600 for k in keys.values())
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["heldout"] and not keys["val"] & keys["heldout"]
    # other seeds of one split are other scenes too, and streams of clips and crops are apart from images
    other = {scene_key(r.scene) for r in sample("train", 300, seed=1, grid=None)}
    assert not other & keys["train"]


def test_record_rng_streams_differ():
    draws = {(s, st_): record_rng(s, 0, 5, st_).random() for s in SPLITS for st_ in ("image", "clip", "multicrop")}
    assert len(set(draws.values())) == len(draws)


# ---------------------------------------------------------------- questions

def test_answers_recomputed_from_the_scene(records):
    for r in records:
        kind, _ = check_image_question(r.scene, r.question)
        assert kind == r.qtype, (r.question.text, kind, r.qtype)


def test_question_mix_and_yes_no_balance(records):
    mix = Counter(r.qtype for r in records)
    assert mix == {"colour": 400, "shape": 300, "size": 200, "relation": 400, "count": 300, "exist": 400}
    for qtype in ("exist", "relation"):
        answers = Counter(r.answer for r in records if r.qtype == qtype)
        assert set(answers) == {"yes", "no"} and abs(answers["yes"] / sum(answers.values()) - 0.5) <= 0.02
    # an arbitrary window is balanced too (within one block of 20)
    window = sample("heldout", 333, seed=3, start=17, grid=None)
    yes = sum(r.answer == "yes" for r in window if r.qtype == "exist")
    no = sum(r.answer == "no" for r in window if r.qtype == "exist")
    assert abs(yes - no) <= 4


def test_answers_are_spread(records):
    for qtype, least in (("colour", 7), ("shape", 6), ("size", 3), ("count", 5)):
        answers = Counter(r.answer for r in records if r.qtype == qtype)
        assert len(answers) >= least, (qtype, answers)
        assert max(answers.values()) / sum(answers.values()) < 0.45, (qtype, answers)


def test_pope_negatives_name_absent_objects_in_three_flavours(records):
    negatives = [r for r in records if r.qtype == "exist" and r.answer == "no"]
    assert Counter(r.question.meta["flavour"] for r in negatives).keys() == {"random", "popular", "adversarial"}
    for r in negatives:
        attrs = r.question.meta["attrs"]
        assert not denote(r.scene.objects, attrs)
        if r.question.meta["flavour"] == "popular":  # each value is in the scene, the combination is not
            assert all(any(getattr(o, a) == v for o in r.scene.objects) for a, v in attrs.items())


def test_attribute_questions_often_ask_about_tiny_objects_and_relations(records):
    attribute = [r for r in records if r.qtype in ("colour", "shape")]
    assert sum(r.question.meta["tiny"] for r in attribute) / len(attribute) > 0.4
    assert sum(r.question.meta["relation"] is not None for r in attribute) / len(attribute) > 0.25


def test_phrasings_vary(records):
    frames = Counter(" ".join(w for w in r.question.tokens[:3]) for r in records)
    assert len(frames) >= 30
    assert {",", "?", "."} <= {w for r in records for w in r.question.tokens}


def test_question_grounding(records):
    for r in records:
        q = r.question
        check_grounding(r.scene.objects, q.tokens, q.refs)
        kind, named = check_image_question(r.scene, q)
        if kind in ("count", "exist"):  # content words name exactly the objects the phrase denotes
            content = {tuple(ref) for w, ref in zip(q.tokens, q.refs) if w in COLOURS | SIZES or w in SHAPE_OF}
            assert content <= {tuple(named[0])}, q.text


def test_ask_rejects_unknown_types():
    scene = sample_scene(np.random.default_rng(0), WorldConfig())
    with pytest.raises(ValueError, match="qtype"):
        ask(scene, np.random.default_rng(0), "weather")
    with pytest.raises(ValueError, match="answer"):
        ask(scene, np.random.default_rng(0), "exist", answer="maybe")


# ---------------------------------------------------------------- captions

def caption_nps(tokens):
    """Indefinite noun phrases ``(start, end, attrs)`` of a list / relation / object caption."""
    out, i = [], 0
    while i < len(tokens):
        if tokens[i] in ("a", "an") and parse_np(tokens, i) is not None:
            attrs, j = parse_np(tokens, i)
            out.append((i, j, attrs))
            i = j
        else:
            i += 1
    return out


def check_caption(scene, c):
    objects, t = scene.objects, c.tokens
    if c.style == "count":
        said = {}
        i = 0
        while i < len(t):
            if t[i] in NUMBER:
                n = NUMBER.index(t[i])
                key = ("shape", SHAPE_OF[t[i + 1]]) if t[i + 1] in SHAPE_OF else ("colour", t[i + 1])
                said[key] = n
                i += 2
            else:
                i += 1
        by = next(iter(said))[0]
        assert said == dict(Counter((by, getattr(o, by)) for o in objects)), c.text
        return
    nps = caption_nps(t)
    assert nps, c.text
    true = all(denote(objects, attrs) for _, _, attrs in nps)
    if c.style == "relation":
        rel = parse_rel(t, nps[0][1] + (1 if t[nps[0][1]] == "is" else 0))[0]
        a, b = c.refs[nps[0][1] - 1], c.refs[nps[1][1] - 1]
        true = true and bool(a) and bool(b) and holds(objects[a[0]], objects[b[0]], rel)
    elif c.style == "list" and not c.negative:
        assert sorted(k for s, e, _ in nps for k in c.refs[e - 1]) == list(range(len(objects))), c.text
    assert true != c.negative, (c.text, c.negative)


def test_captions_true_and_grounded(records):
    styles = Counter()
    for r in records[:600]:
        check_grounding(r.scene.objects, r.caption.tokens, r.caption.refs)
        check_caption(r.scene, r.caption)
        styles[r.caption.style] += 1
    assert set(styles) == {"list", "relation", "count", "object"}


def test_negative_captions_are_false():
    rng = np.random.default_rng(1)
    made = 0
    for _ in range(300):
        scene = sample_scene(rng, WorldConfig())
        for style in ("list", "relation", "object", None):
            c = caption(scene, rng, style=style, negative=True)
            check_grounding(scene.objects, c.tokens, c.refs)
            check_caption(scene, c)
            made += c.negative
    assert made > 1100
    with pytest.raises(ValueError, match="style"):
        caption(scene, rng, style="poem")


def test_object_phrases():
    scene = sample_scene(np.random.default_rng(2), WorldConfig())
    phrases = object_phrases(scene)
    assert len(phrases) == len(scene.objects)
    for k, (c, o) in enumerate(zip(phrases, scene.objects)):
        assert c.text == f"a {o.size} {o.colour} {o.shape} ."
        assert c.refs == ((), (k,), (k,), (k,), ())


# ---------------------------------------------------------------- vocabulary

def test_every_token_is_in_the_vocabulary(records, clips, multicrops):
    vocab = vocabulary()
    used = set()
    for r in list(records) + list(clips) + list(multicrops):
        for text in (r.question.tokens, r.caption.tokens, [r.answer]):
            assert set(text) <= set(vocab), set(text) - set(vocab)
            used |= set(text)
    # the vocabulary is closed and nearly all of it is used
    assert len(used) / len(vocab) > 0.9, sorted(set(vocab) - used)


def test_vocabulary_kinds():
    vocab = vocabulary()
    assert list(vocab) == list(vocabulary())  # a fixed order
    assert all(vocab[w] == "colour" for w in COLOURS)
    assert all(vocab[w] == "shape" for w in SHAPE_OF)
    assert all(vocab[w] == "size" for w in SIZES)
    assert all(vocab[w] == "count" for w in NUMBER)
    assert {vocab[w] for w in ("the", "is", "of", "what", "how")} == {"function"}
    assert {vocab[w] for w in ("?", ".", ",")} == {"punctuation"}
    assert vocab["left"] == "relation" and vocab["yes"] == "answer"
    with pytest.raises(ValueError, match="token"):
        token_kind("banana")


# ---------------------------------------------------------------- rendering and grounding

def test_render_size_and_dtype():
    for size, patch in ((96, 6), ((64, 128), 8), (48, 4)):
        config = WorldConfig(image_size=size, patch_size=patch)
        r = sample("train", 3, seed=0, config=config)[0]
        h, w = config.image_size
        assert r.image.shape == (h, w, 3) and r.image.dtype == np.uint8
        assert r.coverage.shape == (len(r.scene.objects), h // patch, w // patch)
        check_image_question(r.scene, r.question)


def test_tiny_objects_occur_and_have_patch_masks(records):
    tiny = [(r, k) for r in records[:500] for k, o in enumerate(r.scene.objects) if o.size == "tiny"]
    total = sum(len(r.scene.objects) for r in records[:500])
    assert len(tiny) / total > 0.2
    for r, k in tiny:
        o = r.scene.objects[k]
        assert 6.0 <= 2 * o.radius <= 12.5  # 1 to 2 patches of 6 px
        assert r.coverage[k].sum() > 0
        assert patch_masks(r.coverage)[k].any()
        ci, cj = int(o.y // 6), int(o.x // 6)  # the patch holding its centre is covered
        assert r.coverage[k, ci, cj] > 0 or o.shape in ("cross", "star", "triangle")


def test_coverage_on_another_grid_is_the_scene_drawn_on_it():
    """Records sampled for one model's grid give the object masks of another's (a lab CLIP's 16 x 16
    against a Qwen checkpoint's 8 x 8): the same coverage as records sampled on that grid."""
    on_8 = sample("heldout", 4, seed=5, grid=(8, 8))
    on_16 = sample("heldout", 4, seed=5, grid=(16, 16))
    for a, b in zip(on_8, on_16):
        assert coverage_on(a, (8, 8)) is a.coverage  # its own grid: unchanged
        assert np.array_equal(coverage_on(a, (16, 16)), b.coverage)
        assert np.array_equal(coverage_on(b, (8, 8)), a.coverage)
    unmasked = sample("heldout", 1, seed=5, grid=None)[0]
    assert np.array_equal(coverage_on(unmasked, (16, 16)), on_16[0].coverage)


def test_coverage_matches_the_drawn_area():
    rng = np.random.default_rng(3)
    for _ in range(40):
        scene = sample_scene(rng, WorldConfig())
        image, labels = render_with_labels(scene)
        for grid in ((16, 16), (24, 24), (14, 14), (7, 9)):
            cov = coverage_from_labels(labels, len(scene.objects), grid)
            patch_area = 96 * 96 / (grid[0] * grid[1])
            for k, o in enumerate(scene.objects):
                assert cov[k].sum() * patch_area == pytest.approx((labels == k).sum(), rel=1e-4)
                if o.shape == "circle":  # an independent area: pi r^2
                    assert (labels == k).sum() == pytest.approx(math.pi * o.radius ** 2, rel=0.2)
        expected = coverage_from_labels(labels, len(scene.objects), (16, 16))
        assert np.array_equal(patch_coverage(scene, (16, 16)), expected)
        # object pixels carry the object's colour (edge pixels of tiny ones are blended)
        for k, o in enumerate(scene.objects):
            error = np.abs(image[labels == k].astype(int) - np.asarray(o.rgb)).max(1)
            assert error.min() <= 1
            if o.radius >= 6:
                assert np.median(error) <= 1


def test_token_masks(records):
    r = next(r for r in records if r.qtype == "colour")
    masks = patch_masks(r.coverage)
    per_token = token_masks(r.question.refs, masks)
    assert per_token.shape == (len(r.question.tokens), 16, 16)
    for word, ref, m in zip(r.question.tokens, r.question.refs, per_token):
        assert m.any() == bool(ref)
    with pytest.raises(ValueError, match="threshold"):
        patch_masks(r.coverage, threshold=0)


def test_pointing_hits(records):
    r = next(r for r in records if r.qtype == "colour" and r.question.meta["relation"])
    q, masks = r.question, patch_masks(r.coverage)
    oracle = np.stack([masks[list(ref)].any(0) if ref else np.zeros((16, 16), bool) for ref in q.refs]).astype(float)
    hits = pointing_hits(oracle, q.refs, masks)  # scores that peak on the named object: all hits
    named = np.array([bool(ref) for ref in q.refs])
    assert np.all(hits[named] == 1.0) and np.isnan(hits[~named]).all()
    background = (r.coverage.sum(0) == 0).astype(float)  # peaks off every object: all misses
    assert np.all(pointing_hits(np.repeat(background[None], len(q.refs), 0), q.refs, masks)[named] == 0.0)
    with pytest.raises(ValueError, match="scores"):
        pointing_hits(np.zeros((len(q.refs) + 1, 16, 16)), q.refs, masks)


def test_scene_layout_is_valid(records):
    for r in records[:500]:
        s = r.scene
        assert 1 <= len(s.objects) <= 7
        for i, a in enumerate(s.objects):
            assert a.radius <= a.x <= s.width - a.radius and a.radius <= a.y <= s.height - a.radius
            for b in s.objects[i + 1:]:
                assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius
    assert Counter(len(r.scene.objects) for r in records).keys() >= {3, 4, 5, 6, 7}


def test_json_round_trip(records):
    for r in records[:20]:
        d = json.loads(json.dumps(r.to_dict()))
        scene = Scene.from_dict(d["scene"])
        assert scene == r.scene and np.array_equal(render(scene), r.image)
        assert Question.from_dict(d["question"]) == r.question
        assert Caption.from_dict(d["caption"]) == r.caption
        assert np.allclose(dense_coverage(d["coverage"], tuple(d["grid"])), r.coverage, atol=1e-4)
    config = WorldConfig(image_size=(64, 96), patch_size=8)
    assert WorldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split=st.sampled_from(SPLITS), seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10**9))
def test_any_seed_gives_a_valid_record(split, seed, index):
    r = make_record(split, seed, index)
    assert r.image.shape == (96, 96, 3) and 1 <= len(r.scene.objects) <= 7
    kind, _ = check_image_question(r.scene, r.question)
    assert kind == r.qtype
    check_grounding(r.scene.objects, r.question.tokens, r.question.refs)
    check_caption(r.scene, r.caption)
    assert set(r.question.tokens) | set(r.caption.tokens) <= set(vocabulary())


# ---------------------------------------------------------------- AnyRes crops

def test_multicrop_shapes_and_bookkeeping(multicrops):
    for r in multicrops:
        rows, cols = r.layout
        H, W = rows * 96, cols * 96
        K = len(r.scene.objects)
        assert r.image.shape == (H, W, 3) and r.crops.shape == (rows * cols, 96, 96, 3) and r.base.shape == (96, 96, 3)
        assert r.crops.dtype == np.uint8 and r.base.dtype == np.uint8
        assert r.crop_coverage.shape == (rows * cols, K, 16, 16) and r.base_coverage.shape == (K, 16, 16)
        for c, (y0, x0, y1, x1) in enumerate(r.boxes):
            assert np.array_equal(r.crops[c], r.image[y0:y1, x0:x1])
        labels = render_with_labels(r.scene)[1]
        for k, o in enumerate(r.scene.objects):
            where = dict(r.object_crops[k])
            assert sum(where.values()) == pytest.approx(1.0, abs=1e-3)
            centre = int(o.y // 96) * cols + int(o.x // 96)
            assert centre in where  # the crop holding its centre holds part of it
            for c in range(rows * cols):  # coverage of a crop agrees with the share of the object's pixels
                share = r.crop_coverage[c, k].sum() * 36 / (labels == k).sum()
                assert share == pytest.approx(where.get(c, 0.0), abs=1e-3)
                assert (k in r.crop_objects(c)) == (c in where)
            assert r.base_coverage[k].sum() * (H * W / 256) == pytest.approx((labels == k).sum(), rel=1e-4)
        check_image_question(r.scene, r.question)
        check_caption(r.scene, r.caption)
    assert any(len(r.object_crops[k]) > 1 for r in multicrops for k in range(len(r.scene.objects)))
    assert max(len(r.scene.objects) for r in multicrops) > 7


def test_multicrop_rejects_bad_layouts():
    with pytest.raises(ValueError, match="layout"):
        sample_multicrop("train", 1, layout=(0, 2))
    with pytest.raises(ValueError, match="layout"):
        sample_multicrop("train", 1, layout=(1, 1))


# ---------------------------------------------------------------- clips

def clip_direction(clip, k):
    vx, vy = clip.velocities[k]
    if vx == 0 and vy == 0:
        return "still"
    return ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")


def in_view(o, scene):
    return o.radius <= o.x <= scene.width - o.radius and o.radius <= o.y <= scene.height - o.radius


def out_of_view(o, scene):
    return (o.x <= -o.radius or o.x >= scene.width + o.radius or o.y <= -o.radius
            or o.y >= scene.height + o.radius)


def clip_event(clip, k):
    frames = [clip.frame(t) for t in range(clip.n_frames)]
    first, last = frames[0].objects[k], frames[-1].objects[k]
    if all(in_view(f.objects[k], f) for f in frames):
        return "stays"
    if out_of_view(first, frames[0]) and in_view(last, frames[-1]):
        return "enters"
    if in_view(first, frames[0]) and out_of_view(last, frames[-1]):
        return "leaves"
    return "partial"


def check_clip_question(clip, q):
    t, text, objects = q.tokens, q.text, clip.start.objects
    motion = [clip_direction(clip, k) for k in range(len(objects))]
    events = [clip_event(clip, k) for k in range(len(objects))]
    if text.startswith("how many objects"):
        end = t.index("in") if "in" in t else t.index("?")
        key = MOTION[" ".join(t[3:end])]
        n = sum(m != "still" for m in motion) if key == "moving" else sum(m == key for m in motion)
        assert q.answer == NUMBER[n], text
        return "clip_count"
    if text.startswith(("is there", "does a", "does an", "do you see")):
        start = 3 if text.startswith("do you see") else (2 if text.startswith("is there") else 1)
        attrs, _ = parse_np(t, start)
        assert q.answer == ("yes" if denote(objects, attrs) else "no"), text
        return "clip_exist"
    attrs, i = parse_np(t, first_np(t))
    found = denote(objects, attrs)
    if t[i] == "that":
        end = t.index("have") if "have" in t else t.index("?")
        key = MOTION[" ".join(t[i + 1:end])]
        found = [k for k in found if (events[k] if key in ("enters", "leaves") else motion[k]) == key]
    assert len(found) == 1, (text, found)
    k = found[0]
    if "colour" in t:
        assert q.answer == objects[k].colour, text
        return "clip_colour"
    if "shape" in t:
        assert q.answer == objects[k].shape, text
        return "clip_shape"
    assert q.answer == motion[k] != "still", text
    return "clip_direction"


def test_clip_answers_recomputed(clips):
    for r in clips:
        assert check_clip_question(r.clip, r.question) == r.qtype, r.question.text
        check_grounding(r.clip.start.objects, r.question.tokens, r.question.refs)
        check_grounding(r.clip.start.objects, r.caption.tokens, r.caption.refs)
    answers = Counter(r.answer for r in clips if r.qtype == "clip_exist")
    assert answers["yes"] == answers["no"]
    assert Counter(r.answer for r in clips if r.qtype == "clip_direction").keys() == {"left", "right", "up", "down"}


def test_clip_shapes_motion_and_bookkeeping(clips):
    config = WorldConfig()
    kinds = Counter()
    for r in clips[:80]:
        clip, T = r.clip, config.n_frames
        K = len(clip.start.objects)
        assert r.frames.shape == (T, 96, 96, 3) and r.frames.dtype == np.uint8
        assert r.coverage.shape == (T, K, 16, 16)
        for k in range(K):
            ev, mv = clip_event(clip, k), clip_direction(clip, k)
            kinds[ev] += 1
            kinds[mv] += 1
            assert ev != "partial"
            seen = r.coverage[:, k].sum(axis=(1, 2))
            if ev == "enters":
                assert seen[0] == 0 and seen[-1] > 0
            elif ev == "leaves":
                assert seen[0] > 0 and seen[-1] == 0
            else:
                assert (seen > 0).all()
            if mv == "still":
                assert np.array_equal(r.coverage[0, k], r.coverage[-1, k])
            else:  # it really moves along its direction
                vx, vy = clip.velocities[k]
                assert math.hypot(vx, vy) * (T - 1) >= 9.0
        for t in range(T):  # objects never collide
            objs = clip.frame(t).objects
            for i in range(K):
                for j in range(i + 1, K):
                    assert math.hypot(objs[i].x - objs[j].x, objs[i].y - objs[j].y) >= objs[i].radius + objs[j].radius
        frames, _ = render_clip(clip)
        assert np.array_equal(frames, r.frames)
        assert Clip.from_dict(json.loads(json.dumps(clip.to_dict()))) == clip
    assert {"enters", "leaves", "stays", "still", "left", "right", "up", "down"} <= set(kinds)


def test_clip_frame_count_is_configurable():
    r = sample_clips("val", 2, seed=1, config=WorldConfig(n_frames=4))[0]
    assert r.frames.shape[0] == 4 and r.coverage.shape[0] == 4
    check_clip_question(r.clip, r.question)
    with pytest.raises(ValueError, match="n_frames"):
        WorldConfig(n_frames=1)


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs, name", [
    (dict(split="train", n=0), "n must"),
    (dict(split="train", n=2.5), "n must"),
    (dict(split="test", n=1), "split"),
    (dict(split="train", n=1, seed=-1), "seed"),
    (dict(split="train", n=1, start=-3), "start"),
    (dict(split="train", n=1, workers=0), "workers"),
    (dict(split="train", n=1, grid=(0, 4)), "grid"),
    (dict(split="train", n=1, grid="coarse"), "grid"),
    (dict(split="train", n=1, config="big"), "config"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample(**kwargs)
    with pytest.raises(ValueError, match=name):
        sample_clips(**kwargs)
    with pytest.raises(ValueError, match=name):
        sample_multicrop(**kwargs)


@pytest.mark.parametrize("changes, name", [
    (dict(image_size=95), "image_size"), (dict(image_size=(96,)), "image_size"), (dict(image_size=0), "image_size"),
    (dict(image_size=16, patch_size=4), "image_size"), (dict(patch_size=0), "patch_size"),
    (dict(n_objects=(5, 3)), "n_objects"), (dict(n_objects=(1, 11)), "n_objects"),
    (dict(colours=("red",)), "colours"), (dict(shapes=("circle", "hexagon")), "shapes"),
    (dict(question_mix=(("exist", 3),)), "question_mix"), (dict(question_mix=(("weather", 2),)), "question_mix"),
    (dict(relational_rate=1.5), "relational_rate"), (dict(size_weights=(1, 1)), "size_weights"),
])
def test_bad_config_names_the_field(changes, name):
    with pytest.raises(ValueError, match=name):
        WorldConfig(**changes)


def test_restricted_world():
    config = WorldConfig(colours=("red", "blue"), shapes=("circle", "square"), n_objects=(2, 4),
                         question_mix=(("colour", 1), ("exist", 2)))
    for r in sample("train", 60, seed=0, config=config):
        assert {o.colour for o in r.scene.objects} <= {"red", "blue"}
        assert {o.shape for o in r.scene.objects} <= {"circle", "square"}
        assert r.qtype in ("colour", "exist")
        check_image_question(r.scene, r.question)


def test_centre_cell_is_the_cell_holding_an_objects_centre():
    from types import SimpleNamespace

    from eadp_lab.world.grounding import centre_cell

    at = lambda x, y: SimpleNamespace(x=x, y=y)  # noqa: E731
    assert centre_cell(at(0.0, 0.0), 96, 96, (16, 16)) == (0, 0)
    assert centre_cell(at(11.99, 6.0), 96, 96, (16, 16)) == (1, 1)  # 6 px cells: y = 6 opens row 1
    assert centre_cell(at(96.0, 95.9), 96, 96, (16, 16)) == (15, 15)  # the far edge stays on the grid
    assert centre_cell(at(50.0, 30.0), 96, 192, (4, 8)) == (1, 2)  # rows and columns on their own axes


# ---------------------------------------------------------------- settings that leave the default world alone

def _world_digest(records):
    """What the default world's questions and scenes are, independent of rendering."""
    import hashlib

    h = hashlib.sha1()
    for r in records:
        q = r.question
        h.update(json.dumps([q.text, q.answer, q.qtype, [list(x) for x in q.refs], r.caption.text]).encode())
        h.update(json.dumps([[round(o.x, 6), round(o.y, 6), round(o.radius, 6), o.shape, o.colour, o.size]
                             for o in r.scene.objects]).encode())
    return h.hexdigest()[:16]


# Digests of the world written before WorldConfig had verbosity and object_scale.
WORLD_DIGESTS = {("heldout", 0): "5a1e39b83106d68d", ("train", 7): "5dbd57664e87dd0e",
                 ("heldout", 4242): "42e0df80a99a0ea2"}


@pytest.mark.parametrize("split, seed", sorted(WORLD_DIGESTS))
def test_verbosity_0_and_object_scale_1_leave_the_world_as_it_was(split, seed):
    default = sample(split, 40, seed=seed)
    explicit = sample(split, 40, seed=seed, config=WorldConfig(verbosity=0, object_scale=1.0))
    assert _world_digest(default) == _world_digest(explicit) == WORLD_DIGESTS[split, seed]
    for a, b in zip(default, explicit):
        assert a.to_dict() == b.to_dict() and np.array_equal(a.image, b.image)
        assert "verbosity" not in a.question.meta
    assert WorldConfig().unit == 96 and isinstance(WorldConfig().unit, int)


def test_verbose_questions_keep_the_scene_the_answer_and_what_they_name():
    plain = sample("heldout", 120, seed=5)
    below = plain
    for level in range(1, 7):
        verbose = sample("heldout", 120, seed=5, config=WorldConfig(verbosity=level))
        for p, v, b in zip(plain, verbose, below):
            assert v.scene == p.scene and np.array_equal(v.image, p.image) and v.caption == p.caption
            assert (v.answer, v.qtype) == (p.answer, p.qtype)
            start, stop = v.question.meta["core"]
            assert v.question.meta["verbosity"] == level
            core = list(zip(v.question.tokens, v.question.refs))
            assert core[start:stop] + core[-1:] == list(zip(p.question.tokens, p.question.refs))
            filler = core[:start] + core[stop:-1]
            assert filler and all(ref == () for _, ref in filler)
            assert all(token_kind(w) in ("function", "noun", "punctuation") and w not in (",", "object", "thing")
                       for w, _ in filler)
            check_grounding(v.scene.objects, v.question.tokens, v.question.refs)
            # each level adds filler around the level below it: its openings and closings begin with those below
            b_start, b_stop = b.question.meta.get("core", [0, len(b.question.tokens) - 1])
            assert v.question.tokens[:start][:b_start] == b.question.tokens[:b_start]
            assert v.question.tokens[stop:-1][:len(b.question.tokens) - 1 - b_stop] == b.question.tokens[b_stop:-1]
        below = verbose


def test_object_scale_makes_the_objects_larger_on_the_same_canvas():
    base = sample("heldout", 60, seed=2, grid=None, config=WorldConfig(size_weights=(0, 0, 1)))
    big = sample("heldout", 60, seed=2, grid=None, config=WorldConfig(size_weights=(0, 0, 1), object_scale=1.25))
    assert WorldConfig(object_scale=1.25).unit == 120.0
    assert all(r.image.shape == (96, 96, 3) for r in big)
    large = lambda rs: [o.radius for r in rs for o in r.scene.objects if o.size == "large"]  # noqa: E731
    assert min(large(big)) > max(large(base)) * 0.9 and np.mean(large(big)) > 1.2 * np.mean(large(base))
    for r in big:
        check_image_question(r.scene, r.question)
        check_grounding(r.scene.objects, r.question.tokens, r.question.refs)


@pytest.mark.parametrize("changes, name", [
    (dict(verbosity=-1), "verbosity"), (dict(verbosity=7), "verbosity"), (dict(verbosity=1.5), "verbosity"),
    (dict(object_scale=0.2), "object_scale"), (dict(object_scale=3), "object_scale"),
    (dict(object_scale=True), "object_scale"), (dict(object_scale="big"), "object_scale"),
])
def test_bad_new_settings_name_the_field(changes, name):
    with pytest.raises(ValueError, match=name):
        WorldConfig(**changes)
