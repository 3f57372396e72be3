"""The `fli2moe` command line: `demo`, `train`, `push`, `explain`.

    fli2moe demo                                   # the README's main job (planted benchmark, offline)
    fli2moe train --config hub_configs/mmimdb.json --data-dir data/mmimdb [key=value ...]
    fli2moe push --checkpoint outputs/mmimdb --repo-id you/fl-i2moe-mmimdb
    fli2moe explain --checkpoint outputs/planted --split test --limit 50
    fli2moe space build --checkpoint outputs/planted/fl_i2moe --out space/   # a Space folder that deploys as it is
    fli2moe space push --out space/ --repo-id you/fl-i2moe-explainer
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from .stop_request import install_handlers


def _train(args: argparse.Namespace) -> int:
    from .run_config import load_run_config
    from .training import run_training

    if args.resume not in (None, "") and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the earlier run, or replace it")
    config = load_run_config(args.config, args.overrides)
    result = run_training(
        config,
        data_dir=args.data_dir,
        output_dir=args.output_dir or f"outputs/{Path(args.config).stem}",
        cache_dir=args.cache_dir,
        resume=args.resume if args.resume not in (None, "") else False,
        init_from=args.init_from,
        overwrite=args.overwrite,
    )
    _print_result(result)
    return 0


def _print_result(result) -> None:
    shown = {k: round(v, 4) for k, v in result.test_metrics.items() if isinstance(v, (int, float))}
    print("test metrics: " + json.dumps(shown))
    print(f"checkpoint: {result.output_dir.resolve()}")


#: train / validation / test fractions of the demo's planted benchmark
DEMO_SPLITS = (0.6, 0.1, 0.3)


def _demo(args: argparse.Namespace) -> int:
    """Make the planted benchmark, cache its features with the offline encoders, train FL-I2MoE, explain."""
    from .data import load_planted, make_planted, save_planted
    from .feature_cache import cache_features, default_cache_dir
    from .run_config import load_run_config
    from .training import run_training

    t0 = stage = time.time()

    def stage_done(what: str) -> None:
        nonlocal stage
        now = time.time()
        print(f"    {what} in {now - stage:.1f} s")
        stage = now

    root = Path(args.output_dir)
    data_dir = root / "data"
    if not (data_dir / "dataset_dict.json").is_file():
        print(f"[1/4] making the planted-interaction benchmark ({args.n_per_kind} examples per kind) in {data_dir}")
        # a large test split: its synergy examples carrying the planted pair (half) number >= 40
        save_planted(make_planted(n_per_kind=args.n_per_kind, random_state=args.seed, split_fractions=DEMO_SPLITS),
                     data_dir)
    else:
        print(f"[1/4] planted benchmark already at {data_dir}")
    planted = load_planted(data_dir)
    _demo_example(planted["test"])  # before the long stages: a split too small to explain fails now
    stage_done("benchmark")
    config_path = Path(__file__).resolve().parent.parent / "hub_configs" / "planted.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: `fli2moe demo` runs from a checkout of the repository (its hub_configs/); "
            "elsewhere train with `fli2moe train --config <a run config>`"
        )
    overrides = [f"training.seed={args.seed}", *args.overrides]
    config = load_run_config(config_path, overrides)
    print("[2/4] caching features with the offline encoders (MiniLM text, EfficientNet-Lite0 image)")
    cache_features(planted, config.model, args.cache_dir or default_cache_dir())
    stage_done("features")
    print("[3/4] training FL-I2MoE with transformers.Trainer")
    # the demo retrains on every call: its own earlier checkpoint is replaced, not resumed
    result = run_training(config, data_dir=data_dir, output_dir=root / "fl_i2moe", cache_dir=args.cache_dir,
                          overwrite=True)
    _print_result(result)
    stage_done("training")
    print("[4/4] explaining test examples")
    _demo_explanations(result.output_dir, planted["test"], data_dir, args.cache_dir, args.seed)
    stage_done("explanations")
    print(f"done in {time.time() - t0:.0f} s")
    if args.space:
        import subprocess

        app = Path(__file__).resolve().parent.parent / "spaces_app" / "app.py"
        if app.is_file():
            print(f"opening the Space on it: http://127.0.0.1:{args.port}")
            env = dict(os.environ, FLI2MOE_CHECKPOINT=str(result.output_dir.resolve()), GRADIO_SERVER_PORT=str(args.port))
            return subprocess.call([sys.executable, str(app)], env=env)
    return 0


#: test examples the demo's report.html covers (the first of each kind drawn)
DEMO_REPORT_EXAMPLES = 8


def _demo_example(test) -> int:
    """The index of the first synergy test example that carries the planted pair (the one the demo explains)."""
    cues = zip(test["kind"], test["evidence_word"], test["evidence_object"])
    carrying = [i for i, (kind, word, obj) in enumerate(cues) if kind == "synergy" and word and obj]
    if not carrying:
        raise ValueError(f"the demo's test split has no synergy example carrying the planted pair ({len(test)} examples); "
                         "use a larger --n-per-kind (the default is 300)")
    return carrying[0]


def _demo_explanations(checkpoint: Path, test, data_dir: Path, cache_dir: str | None, seed: int) -> None:
    """The demo's last step: one synergy example of the `test` split carrying the planted pair explained from its raw text
    and image (as the README does), printed beside the planted truth, and `report.html` over a few test
    examples (as `fli2moe explain` writes it)."""
    from transformers import AutoModel

    from .explain import Explainer
    from .dataset_evaluation import run_dataset_explanation
    from .processing_fli2moe import FLI2MoEProcessor

    row = test[_demo_example(test)]
    model = AutoModel.from_pretrained(checkpoint).eval()
    explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(checkpoint))
    exp = explainer.explain(explainer.prepare({"text": row["text"], "image": row["image"]}), random_state=seed)
    region = row["image_regions"][0]
    print(f"test example {row['id']}: {row['text']!r}")
    print(exp.summary())
    print(f"planted truth: label {row['label']} (synergy: word AND object); the synergistic pair is the word "
          f"{row['evidence_word']!r} x the {row['evidence_object']} in image region {region} (row {region // 7}, "
          f"column {region % 7})")
    numbers = run_dataset_explanation(checkpoint, split="test", limit=DEMO_REPORT_EXAMPLES, random_state=seed,
                                      data_dir=str(data_dir), cache_dir=cache_dir)
    print(f"report over {DEMO_REPORT_EXAMPLES} test examples: {numbers.parent / 'report.html'}")


def _push(args: argparse.Namespace) -> int:
    from .hub import push_checkpoint

    url = push_checkpoint(args.checkpoint, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.checkpoint} to {url}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .dataset_evaluation import run_dataset_explanation

    report = run_dataset_explanation(
        args.checkpoint,
        split=args.split,
        limit=args.limit,
        output_dir=args.output_dir,
        budget=args.budget,
        random_state=args.seed,
        dense_checkpoint=args.dense_checkpoint,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        n_drawn=args.draw,
    )
    if report is not None:
        print(f"numbers: {report}")
        print(f"report: {report.parent / 'report.html'}")
    return 0


def _space_build(args: argparse.Namespace) -> int:
    from .space import build_space

    out = build_space(args.checkpoint, args.out, overwrite=args.overwrite, cpu_torch=not args.cuda,
                      model_id=args.model_id)
    print(f"Space folder: {out.resolve()}")
    print(f"try it: cd {out} && pip install -r requirements.txt && python app.py")
    return 0


def _space_push(args: argparse.Namespace) -> int:
    from .space import push_space

    url = push_space(args.out, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {args.out} to {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fli2moe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the README's main job: planted benchmark, offline encoders, training, "
                                       "an explanation")
    demo.add_argument("--output-dir", default="outputs/planted")
    demo.add_argument("--n-per-kind", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cache-dir", default=None)
    demo.add_argument("--space", action="store_true", help="open the Gradio Space on the new checkpoint")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("overrides", nargs="*", help="config overrides key=value")
    demo.set_defaults(func=_demo)

    train = sub.add_parser("train", help="train from a hub config with transformers.Trainer")
    train.add_argument("--config", required=True)
    train.add_argument("--data-dir", default=None)
    train.add_argument("--output-dir", default=None)
    train.add_argument("--cache-dir", default=None)
    train.add_argument("--resume", nargs="?", const=True, default=None,
                       help="resume from the last checkpoint in --output-dir, or from the given checkpoint folder")
    train.add_argument("--overwrite", action="store_true",
                       help="delete an earlier run in --output-dir and train from scratch")
    train.add_argument("--init-from", default=None, metavar="DIR_OR_HUB_ID",
                       help="start from a checkpoint's weights and mean tokens (fine-tuning); its encoders and "
                            "modalities must be the config's")
    train.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. training.num_train_epochs=3")
    train.set_defaults(func=_train)

    push = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    push.add_argument("--checkpoint", required=True)
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None)
    push.set_defaults(func=_push)

    explain = sub.add_parser("explain", help="dataset-level explanation report for a checkpoint")
    explain.add_argument("--checkpoint", required=True)
    explain.add_argument("--dense", "--dense-checkpoint", dest="dense_checkpoint", default=None, metavar="DIR",
                         help="a dense baseline checkpoint, explained on the same examples (side by side in report.html)")
    explain.add_argument("--split", default="test")
    explain.add_argument("--limit", type=int, default=None)
    explain.add_argument("--data-dir", default=None)
    explain.add_argument("--output-dir", default=None)
    explain.add_argument("--cache-dir", default=None)
    explain.add_argument("--budget", type=int, default=2048)
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument("--draw", type=int, default=4, metavar="N",
                         help="examples drawn in report.html (token highlights, heatmaps, pair links); the first of "
                              "each kind first")
    explain.set_defaults(func=_explain)

    space = sub.add_parser("space", help="build a self-contained Gradio Space folder for a checkpoint, or push one")
    space_sub = space.add_subparsers(dest="space_command", required=True)
    sbuild = space_sub.add_parser("build", help="write app.py, README (Space header), requirements.txt, wheel, checkpoint")
    sbuild.add_argument("--checkpoint", required=True, help="a checkpoint folder (copied in) or a Hub model id")
    sbuild.add_argument("--out", required=True, help="the Space folder to write")
    sbuild.add_argument("--overwrite", action="store_true", help="replace --out when it exists and is not empty")
    sbuild.add_argument("--cuda", action="store_true", help="leave out the CPU torch index (GPU Space hardware)")
    sbuild.add_argument("--model-id", default=None,
                        help="the Hub id a local checkpoint was pushed to (the README's models: link)")
    sbuild.set_defaults(func=_space_build)
    spush = space_sub.add_parser("push", help="upload a built Space folder to the Hugging Face Hub")
    spush.add_argument("--out", required=True, help="the folder written by `fli2moe space build`")
    spush.add_argument("--repo-id", required=True)
    spush.add_argument("--private", action="store_true")
    spush.add_argument("--token", default=None)
    spush.set_defaults(func=_space_push)
    return parser


def _command_line(argv: list[str], drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    kept = [a for a in argv if a not in drop]
    return " ".join(shlex.quote(a) for a in ["fli2moe", *kept, *(a for a in add if a not in kept)])


def interrupted_note(args: argparse.Namespace, argv: list[str]) -> str:
    """One line for an interrupted command: what it kept and the command that continues it."""
    if args.command == "train":
        from .checkpoints import find_resume_checkpoint

        out = args.output_dir or f"outputs/{Path(args.config).stem}"
        last = find_resume_checkpoint(out)
        if last:
            return (f"interrupted; the last checkpoint is {last}. Continue with: "
                    f"{_command_line(argv, drop=('--overwrite',), add=('--resume',))}")
        return ("interrupted before the first checkpoint; features already encoded stay in the cache. Start again "
                f"with: {_command_line(argv, drop=('--resume',))}")
    if args.command == "explain":
        from .dataset_evaluation import default_output_dir, run_progress

        out = args.output_dir or default_output_dir(args.checkpoint)
        progress = run_progress(out)
        if progress and progress[0]:
            return (f"interrupted; {progress[0]} of {progress[1]} examples are saved in {out}. Continue with: "
                    f"{_command_line(argv)}")
        return ("interrupted before the first example was saved; features already encoded stay in the cache. "
                f"Start again with: {_command_line(argv)}")
    return f"interrupted; what was finished is kept. Start again with: {_command_line(argv)}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    install_handlers()  # Ctrl-C and SIGTERM (a pre-empted job) stop a run with one line, below
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"fli2moe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0") or 0) == 0:  # one line, not one per process
            print(f"fli2moe {args.command}: {interrupted_note(args, argv)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
