"""Tagged-photos benchmark: written in the MMHS150K raw layout, read back by the MMHS150K loader, labels
follow the rule, and the recorded truth points at the subject word's token and the subject patch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("skimage")

from modeling_fli2moe.data import load_mmhs150k  # noqa: E402
from modeling_fli2moe.data.tagged_photos import (  # noqa: E402
    REDUNDANCY_SUBJECTS,
    SYNERGY_SUBJECTS,
    _cues,
    load_tagged_photos,
    make_tagged_photos,
    tagged_photos_label,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return make_tagged_photos(tmp_path_factory.mktemp("tp") / "data", 20, random_state=3)


def test_raw_layout_is_mmhs150k(written):
    assert (written / "MMHS150K_GT.json").is_file()
    ids = {s: (written / "splits" / f"{s}_ids.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(v) for v in ids.values()] == [24, 8, 8]  # 20 per kind: 12 / 4 / 4, two kinds
    assert not set(ids["train"]) & set(ids["test"])
    for tid in ids["test"]:
        assert (written / "img_resized" / f"{tid}.jpg").is_file()
    ds = load_mmhs150k(written)  # the paper dataset's own loader reads it, untouched
    assert {k: len(v) for k, v in ds.items()} == {"train": 24, "validation": 8, "test": 8}


def test_labels_follow_the_rule_and_neither_cue_decides_synergy(written):
    ds = load_tagged_photos(written)
    rows = [r for split in ds.values() for r in split.remove_columns("image")]
    for r in rows:
        assert r["label"] == tagged_photos_label(r["kind"], r["word"], r["subject"])
    assert Counter(r["label"] for r in rows if r["kind"] == "synergy") == {0: 10, 1: 10}
    # neither synergy cue decides alone: every word and every subject is label 1 in half its examples
    cues = _cues("synergy", 2000, np.random.default_rng(0))
    for index in (0, 1):
        rate = {v: np.mean([w == s for w, s in cues if (w, s)[index] == v]) for v in SYNERGY_SUBJECTS}
        assert all(0.45 < r < 0.55 for r in rate.values()), rate
    redundancy = [r for r in rows if r["kind"] == "redundancy"]
    assert all(r["word"] == r["subject"] and r["word"] in REDUNDANCY_SUBJECTS for r in redundancy)
    assert len(SYNERGY_SUBJECTS) >= 5 and len(REDUNDANCY_SUBJECTS) >= 5


def test_truth_points_at_the_word_token_and_the_patch(written):
    from modeling_fli2moe.data.planted import _default_tokenizer

    tokenizer = _default_tokenizer()
    ds = load_tagged_photos(written)["test"]
    for r in ds:
        a, b = r["text_span"]
        assert r["text"][a:b] == r["word"]
        if tokenizer is not None:
            ids = tokenizer(r["text"])["input_ids"]
            assert tokenizer.convert_ids_to_tokens([ids[p] for p in r["text_positions"]]) == [r["word"]]
        x0, y0, x1, y1 = r["image_box"]
        assert r["image_regions"] == [(y0 // 32) * 7 + x0 // 32] and (x1 - x0, y1 - y0) == (32, 32)
        image = np.asarray(r["image"].convert("RGB"), dtype=np.float32)
        # the patch is pasted: its edge differs from the background just outside it
        assert image[y0:y1, x0:x1].std() > 0


def test_same_seed_same_files_and_no_silent_overwrite(written, tmp_path):
    again = make_tagged_photos(tmp_path / "again", 20, random_state=3)
    assert json.loads((again / "MMHS150K_GT.json").read_text()) == json.loads((written / "MMHS150K_GT.json").read_text())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_tagged_photos(again, 20, random_state=3)
    with pytest.raises(ValueError, match="n_per_kind"):
        make_tagged_photos(tmp_path / "small", 5)
