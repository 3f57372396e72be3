"""Dataset loaders on tiny raw-layout fixtures: splits, labels, bad files and error cases."""

from __future__ import annotations

import json
import random
import shutil
import warnings

import pytest
from datasets import ClassLabel, DatasetDict, Image

from modeling_fli2moe.data import (
    ENRICO_DROPPED_IDS,
    ENRICO_TOPICS,
    LOADERS,
    MMHS150K_BINARY_NAMES,
    MMHS150K_CLASSES,
    MMIMDB_GENRES,
    check_image,
    enrico_split_ids,
    get_loader,
    load_enrico,
    load_mmhs150k,
    load_mmimdb,
    load_planted,
    mmhs150k_binary_label,
    mmhs150k_majority_label,
)
from modeling_fli2moe.testing import write_enrico_fixture, write_mmhs150k_fixture, write_mmimdb_fixture

SPLITS = ("train", "validation", "test")


def _ids(ds: DatasetDict) -> dict[str, list[str]]:
    return {s: list(ds[s]["id"]) for s in SPLITS}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- registry


def test_registry_names_every_loader():
    assert LOADERS == {"mmimdb": load_mmimdb, "enrico": load_enrico, "mmhs150k": load_mmhs150k, "planted": load_planted}
    assert get_loader("enrico") is load_enrico
    with pytest.raises(ValueError, match="known loaders"):
        get_loader("imdb")


def test_check_image_catches_truncated_jpeg(tmp_path):
    fx = write_mmimdb_fixture(tmp_path)
    (bad,) = [p for p, why in fx.bad.items() if why == "corrupt"]
    assert check_image(bad, "fast").startswith("corrupt")
    assert check_image(bad, "none") is None  # existence only
    good = fx.root / "dataset" / f"{fx.kept['test'][0]}.jpeg"
    assert check_image(good, "fast") is None and check_image(good, "full") is None
    assert check_image(fx.root / "dataset" / "nope.jpeg") == "missing"


# ----------------------------------------------------------------------------- MM-IMDb


def test_mmimdb_official_split_labels_and_skips(tmp_path):
    fx = write_mmimdb_fixture(tmp_path, n=12)
    with pytest.warns(UserWarning, match=r"skipped 2 example\(s\)") as rec:
        ds = load_mmimdb(fx.root)
    message = str(rec[0].message)
    assert all(str(p) in message for p in fx.bad)  # names every skipped file
    assert _ids(ds) == fx.kept
    assert isinstance(ds["train"].features["image"], Image)
    assert ds["train"].features["labels"].length == len(MMIMDB_GENRES) == 23
    for split in SPLITS:
        for row in ds[split]:
            meta = fx.records[row["id"]]
            expected = [1.0 if g in meta["genres"] else 0.0 for g in MMIMDB_GENRES]
            assert row["labels"] == expected  # fixed order; Reality-TV / News dropped
            assert row["text"] == meta["plot"][0]
    assert any(g not in MMIMDB_GENRES for m in fx.records.values() for g in m["genres"])
    img = ds["test"][0]["image"]
    assert img.size == (20, 30)


def test_mmimdb_plot_options(tmp_path):
    fx = write_mmimdb_fixture(tmp_path, corrupt=False, missing=False)
    longest = load_mmimdb(fx, plot="longest")["train"]
    joined = load_mmimdb(fx, plot="all")["train"]
    for a, b in zip(longest, joined):
        plots = fx.records[a["id"]]["plot"]
        assert a["text"] == max(plots, key=len)
        assert b["text"] == "\n".join(plots)
    with pytest.raises(ValueError, match="plot must be"):
        load_mmimdb(fx, plot="middle")


def test_mmimdb_raise_mode_names_the_file(tmp_path):
    fx = write_mmimdb_fixture(tmp_path, missing=False)
    (bad,) = fx.bad
    with pytest.raises(ValueError, match=bad.name):
        load_mmimdb(fx, on_error="raise")
    fx2 = write_mmimdb_fixture(tmp_path / "b", corrupt=False)
    (gone,) = fx2.bad
    with pytest.raises(FileNotFoundError, match=gone.name):
        load_mmimdb(fx2, on_error="raise")


def test_mmimdb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mmimdb(tmp_path / "nowhere")
    fx = write_mmimdb_fixture(tmp_path, corrupt=False, missing=False)
    with pytest.raises(FileNotFoundError, match="Did you mean"):
        load_mmimdb(tmp_path)  # the parent of mmimdb/
    split = fx.root / "split.json"
    text = split.read_text()
    split.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="split.json.*not valid JSON"):
        load_mmimdb(fx)
    split.write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(ValueError, match="'dev'"):
        load_mmimdb(fx)
    split.write_text(text)
    meta = fx.root / "dataset" / f"{fx.splits['test'][0]}.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(ValueError, match=meta.name):
        load_mmimdb(fx)
    meta.write_text(json.dumps({"plot": ["x"]}))
    with pytest.raises(ValueError, match="genres"):
        load_mmimdb(fx)
    split.unlink()
    with pytest.raises(FileNotFoundError, match="split.json"):
        load_mmimdb(fx)


def test_mmimdb_missing_json_is_skipped(tmp_path):
    fx = write_mmimdb_fixture(tmp_path, corrupt=False, missing=False)
    gone = fx.root / "dataset" / f"{fx.splits['train'][1]}.json"
    gone.unlink()
    with pytest.warns(UserWarning, match=gone.name):
        ds = load_mmimdb(fx)
    assert gone.stem not in ds["train"]["id"]


# ----------------------------------------------------------------------------- ENRICO


def test_enrico_reference_split_and_labels(tmp_path):
    fx = write_enrico_fixture(tmp_path, n=24)
    ds = load_enrico(fx)  # the known-bad 50105 / 50109 wireframes are corrupt but dropped by id
    names = ds["train"].features["label"].names
    assert isinstance(ds["train"].features["label"], ClassLabel)
    assert names == sorted(ENRICO_TOPICS) and len(names) == 20
    ids = _ids(ds)
    assert ids == fx.kept
    assert not set(ENRICO_DROPPED_IDS) & {i for v in ids.values() for i in v}
    # the reference split: shuffle CSV row indices with random.Random(42), cut at 65 % / 80 %
    rows = [sid for sid in fx.records if sid not in ENRICO_DROPPED_IDS]
    keys = list(range(len(rows)))
    random.Random(42).shuffle(keys)
    n = len(rows)
    assert ids["train"] == [rows[k] for k in keys[: int(n * 0.65)]]
    assert ids["test"] == [rows[k] for k in keys[int(n * 0.8) :]]
    assert [len(ids[s]) for s in SPLITS] == [14, 3, 5]
    for row in ds["validation"]:
        assert names[row["label"]] == fx.records[row["id"]]
        assert row["screenshot"].size == (18, 32) and row["wireframe"].format == "PNG"


def test_enrico_bad_files_raise_by_default(tmp_path):
    fx = write_enrico_fixture(tmp_path, corrupt=True)
    (bad,) = fx.bad
    with pytest.raises(ValueError, match=bad.name):
        load_enrico(fx)
    with pytest.warns(UserWarning, match=r"skipped 1 example\(s\).*" + bad.name):
        ds = load_enrico(fx, on_error="skip")
    assert _ids(ds) == fx.kept
    # skipping a file does not move the split of the other screens
    assert (
        ds["validation"]["id"] == enrico_split_ids([s for s in fx.records if s not in ENRICO_DROPPED_IDS])["validation"]
    )
    fx2 = write_enrico_fixture(tmp_path / "b", missing=True)
    with pytest.raises(FileNotFoundError, match=next(iter(fx2.bad)).name):
        load_enrico(fx2)


def test_enrico_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_enrico(tmp_path / "nowhere")
    fx = write_enrico_fixture(tmp_path)
    csv_path = fx.root / "design_topics.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("screen_id,topic", "id,label"))
    with pytest.raises(ValueError, match="header"):
        load_enrico(fx)
    first = next(iter(fx.records))
    csv_path.write_text(text.replace(f"{first},{fx.records[first]}", f"{first},spaceship"))
    with pytest.raises(ValueError, match="unknown topic 'spaceship'"):
        load_enrico(fx)
    ds = load_enrico(fx, topics=(*ENRICO_TOPICS, "spaceship"))
    assert "spaceship" in ds["train"].features["label"].names
    csv_path.write_text(text + f"{first},list\n")
    with pytest.raises(ValueError, match="appears twice"):
        load_enrico(fx)
    csv_path.unlink()
    with pytest.raises(FileNotFoundError, match="design_topics.csv"):
        load_enrico(fx)


# ----------------------------------------------------------------------------- MMHS150K


@pytest.mark.parametrize(
    ("labels", "binary", "majority"),
    [
        ([0, 0, 0], 0, 0),
        ([1, 0, 0], 0, 0),
        ([1, 2, 0], 1, 1),
        ([4, 4, 0], 1, 4),
        ([1, 2, 3], 1, 1),
        ([3, 3, 3], 1, 3),
        ([0, 5, 0], 0, 0),
        ([0, 5, 2], 1, 2),
    ],
)
def test_mmhs150k_label_rules(labels, binary, majority):
    assert mmhs150k_binary_label(labels) == binary
    assert mmhs150k_majority_label(labels) == majority


@pytest.mark.parametrize("labels", [[0, 6, 0], [1, 2], "012", [1.0, 0, 0]])
def test_mmhs150k_label_rules_reject_bad_labels(labels):
    with pytest.raises(ValueError, match="0..5"):
        mmhs150k_binary_label(labels)


def test_mmhs150k_loads_splits_ocr_and_labels(tmp_path):
    fx = write_mmhs150k_fixture(tmp_path, n=15)
    with pytest.warns(UserWarning, match=r"skipped 2 example\(s\)"):
        ds = load_mmhs150k(fx)
    assert _ids(ds) == fx.kept
    assert ds["train"].features["label"].names == list(MMHS150K_BINARY_NAMES)
    for split in SPLITS:
        for row in ds[split]:
            rec = fx.records[row["id"]]
            assert row["text"] == rec["tweet_text"]
            assert row["label"] == mmhs150k_binary_label(rec["labels"])
            ocr = fx.root / "img_txt" / f"{row['id']}.json"
            assert row["ocr_text"] == (json.loads(ocr.read_text())["img_text"] if ocr.exists() else "")
    assert {r["ocr_text"] == "" for r in ds["train"]} == {True, False}
    six = _quiet(load_mmhs150k, fx, label_mode="majority6")
    assert six["train"].features["label"].names == list(MMHS150K_CLASSES)
    assert six["test"]["label"] == [mmhs150k_majority_label(fx.records[i]["labels"]) for i in six["test"]["id"]]


def test_mmhs150k_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_mmhs150k(tmp_path / "nowhere")
    fx = write_mmhs150k_fixture(tmp_path)
    with pytest.raises(ValueError, match="label_mode"):
        load_mmhs150k(fx, label_mode="ternary")
    with pytest.raises(ValueError, match=next(p for p, w in fx.bad.items() if w == "corrupt").name):
        load_mmhs150k(fx, on_error="raise")
    fx = write_mmhs150k_fixture(tmp_path / "clean", corrupt=False, missing=False)
    gt_path = fx.root / "MMHS150K_GT.json"
    gt_text = gt_path.read_text()
    gt = json.loads(gt_text)
    tid = fx.splits["test"][0]
    gt[tid]["labels"] = [0, 7, 0]
    gt_path.write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=tid):
        load_mmhs150k(fx)
    gt_path.write_text(gt_text[:-100])
    with pytest.raises(ValueError, match="MMHS150K_GT.json.*not valid JSON"):
        load_mmhs150k(fx)
    gt_path.write_text(gt_text)
    ocr = next((fx.root / "img_txt").iterdir())
    ocr.write_text('{"img_text": "trunc')
    with pytest.raises(ValueError, match=ocr.name):
        load_mmhs150k(fx)
    ocr.write_text('{"img_text": "ok"}')
    val = fx.root / "splits" / "val_ids.txt"
    val.write_text(val.read_text() + "123\n")
    with pytest.raises(ValueError, match="tweet id 123 is not in"):
        load_mmhs150k(fx)
    val.unlink()
    with pytest.raises(FileNotFoundError, match="val_ids.txt"):
        load_mmhs150k(fx)
    shutil.rmtree(fx.root / "splits")
    with pytest.raises(FileNotFoundError, match="train_ids.txt"):
        load_mmhs150k(fx)


def test_mmhs150k_duplicate_split_id(tmp_path):
    fx = write_mmhs150k_fixture(tmp_path, corrupt=False, missing=False)
    test_ids = fx.root / "splits" / "test_ids.txt"
    test_ids.write_text(test_ids.read_text() + fx.splits["train"][0] + "\n")
    with pytest.raises(ValueError, match="both the train and test"):
        load_mmhs150k(fx)
