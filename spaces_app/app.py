"""FL-I2MoE explained in the browser: upload an image and a caption, see how the modalities work together.

The checkpoint comes from the environment variable FLI2MOE_CHECKPOINT (a folder or a Hub id), else from
`fli2moe_space.json` next to this file (written by `fli2moe space build`), else the one that the README's
main command (`make demo`) leaves in outputs/planted/fl_i2moe. The same file runs from the repository
(spaces_app/app.py) and as the app of a built Space folder.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

HERE = Path(__file__).resolve().parent
SPACE_FILE = HERE / "fli2moe_space.json"  # written by `fli2moe space build`
ROOT = HERE.parent
IN_REPO = not SPACE_FILE.is_file() and (ROOT / "modeling_fli2moe").is_dir()
if IN_REPO and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("fli2moe.space")


def _ensure_package() -> None:
    """In a built Space folder, install the bundled wheel if the Space builder did not (no dependencies:
    requirements.txt lists them)."""
    import importlib.util

    if importlib.util.find_spec("modeling_fli2moe") is not None:
        return
    wheels = sorted((HERE / "wheels").glob("fl_i2moe-*.whl"))
    if not wheels:
        raise SystemExit("modeling_fli2moe is not installed and no wheels/fl_i2moe-*.whl is next to app.py: "
                         "pip install -r requirements.txt from this folder")
    import subprocess

    logger.warning("modeling_fli2moe is not installed: installing %s", wheels[-1].name)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", str(wheels[-1])])
    importlib.invalidate_caches()


_ensure_package()

from modeling_fli2moe.explain.results import shown_tokens  # noqa: E402
from modeling_fli2moe.report import OUTPUT_UNITS, feature_locality_note  # noqa: E402  (units and the leak note)

try:  # ZeroGPU Spaces: the GPU is attached only inside functions decorated with @spaces.GPU
    import spaces  # noqa: E402

    gpu = spaces.GPU
except ImportError:  # anywhere else: a no-op decorator

    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)


DEFAULT_CHECKPOINT = ROOT / "outputs" / "planted" / "fl_i2moe"


def _queue_setting(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{name}={value!r}: expected a whole number >= 1")
    return int(value)


#: The queue. Two explanations run at once: one call is partly serial Python (encoding, drawing, JSON), so a
#: second one fills the idle core; on 2 CPU cores that raised throughput at 8 users from 0.31-0.36 to
#: 0.38-0.44 calls per second for about 150 MiB more memory (bench/space_load.py). At most QUEUE_SIZE
#: requests wait; one more gets gradio's "Queue is full" answer at once rather than a wait without end.
#: FLI2MOE_CONCURRENCY and FLI2MOE_QUEUE_SIZE override them (e.g. more at once on a GPU).
CONCURRENCY = _queue_setting("FLI2MOE_CONCURRENCY", 2)
QUEUE_SIZE = _queue_setting("FLI2MOE_QUEUE_SIZE", 16)
MAX_IMAGE_PIXELS = 4096 * 4096
EXPERT_ROLES = {
    "uniqueness_text": "Uniqueness (text): trained to rely on the caption alone; it must change when the text is removed and not when the image is.",
    "uniqueness_image": "Uniqueness (image): trained to rely on the image alone; it must change when the image is removed and not when the caption is.",
    "synergy": "Synergy: trained to need both modalities together; removing either one must change its output.",
    "redundancy": "Redundancy: trained on evidence that both modalities carry; it must survive losing either one.",
    "dense": "Dense baseline: one expert, no router, no interaction training.",
    "mixture": "Mixture: the router-weighted sum of the experts, which is the model's prediction.",
}

INTRO = """# FL-I2MoE: how do the caption and the image work together?

Upload an image and write a caption (or click an example), then press **Explain**. The model is a
mixture of experts over frozen encoders (MiniLM for text, EfficientNet-Lite0 for images). You will see
the prediction, how the router weighs each expert, which words and image regions each expert relies on,
and which word-region **pairs** act together: *synergistic* pairs (high Shapley interaction: the pair is
worth more than its parts) and *redundant* pairs (high redundancy gap: either one alone carries the
evidence). Masking those pairs is compared against masking random pairs, to show they matter.

How to read the numbers: probabilities and router weights run from 0 to 1 (the router's weights of one
example sum to 1); token and region shades are relative importance, scaled so that each expert's most
important token or region is 1; SII and RG are in the log-odds of the predicted label (0 = no interaction;
s.e. = their Monte Carlo standard error); a masking drop is the fall in the predicted label's probability
(0 to 1).
"""


def resolve_checkpoint() -> str | None:
    """FLI2MOE_CHECKPOINT, else the checkpoint named in fli2moe_space.json (a folder relative to this file,
    or a Hub id), else the repository's demo checkpoint when it exists."""
    name = os.environ.get("FLI2MOE_CHECKPOINT")
    if name:
        return name
    if SPACE_FILE.is_file():
        import json

        target = json.loads(SPACE_FILE.read_text())["checkpoint"]
        return str(HERE / target) if (HERE / target).is_dir() else target
    return str(DEFAULT_CHECKPOINT) if (DEFAULT_CHECKPOINT / "config.json").is_file() else None


class ExplainerService:
    """Loads the checkpoint, its processor and an Explainer once; explains one example per call."""

    def __init__(self, checkpoint: str | None) -> None:
        self.checkpoint = checkpoint
        self.error: str | None = None
        self.explainer = None
        if checkpoint is None:
            self.error = (
                "No checkpoint found. Make one with `make demo` (it trains FL-I2MoE on the planted benchmark in a "
                "few minutes), or set FLI2MOE_CHECKPOINT to a checkpoint folder or Hub id, then restart the app."
            )
            return
        try:
            from transformers import AutoModel

            import modeling_fli2moe  # noqa: F401  (registers the Auto classes)
            from modeling_fli2moe.explain import Explainer
            from modeling_fli2moe.processing_fli2moe import FLI2MoEProcessor

            import torch

            from modeling_fli2moe.integrity import verify_checkpoint

            device = "cuda" if torch.cuda.is_available() else "cpu"
            verify_checkpoint(checkpoint)  # a broken or missing folder is named before transformers sees it
            model = AutoModel.from_pretrained(checkpoint).eval().to(device)
            self.explainer = Explainer(model, FLI2MoEProcessor.from_pretrained(checkpoint, device=device))
            self.config = model.config
        except Exception as err:  # shown in the page, never a traceback
            logger.exception("could not load %s", checkpoint)
            self.error = f"Could not load the checkpoint {checkpoint}: {err}"

    def max_tokens(self) -> int:
        for m in self.config.modalities:
            if (m.get("encoder") or {}).get("type") == "hf-text":
                return int(m.get("max_tokens") or m["encoder"].get("max_tokens") or 64)
        return 64


def _check_inputs(image, caption: str | None, service: ExplainerService) -> tuple[Image.Image, str, list[str]]:
    notes = []
    if service.error:
        raise gr.Error(service.error)
    if image is None:
        raise gr.Error("Please upload an image (PNG or JPEG) first.")
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as probe:
                if probe.width * probe.height > MAX_IMAGE_PIXELS:
                    raise gr.Error(
                        f"This image is {probe.width} x {probe.height} pixels; please upload one under "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels."
                    )
                image = probe.convert("RGB")
        except gr.Error:
            raise
        except Exception:
            raise gr.Error("That file is not an image this app can read. Please upload a PNG or JPEG.") from None
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image).convert("RGB")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise gr.Error(f"This image is {image.width} x {image.height} pixels; please upload a smaller one.")
    caption = (caption or "").strip()
    if not caption:
        raise gr.Error("Please type a caption: the model explains how the caption and the image work together.")
    tokenizer = getattr(service.explainer.processor.encoders.get("text"), "tokenizer", None)
    if tokenizer is not None:
        n = len(tokenizer(caption)["input_ids"])
        if n > service.max_tokens():
            notes.append(
                f"Note: the caption has {n} tokens; the text encoder reads the first {service.max_tokens()} "
                "(including special tokens), so the rest was cut off."
            )
    return image, caption, notes


def _preview(path):
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception:
        return None


def _overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    import matplotlib.cm as cm

    base = image.convert("RGB").resize((224, 224))
    h = Image.fromarray(np.uint8(cm.jet(heat)[..., :3] * 255)).resize((224, 224), Image.NEAREST)
    return Image.blend(base, h, 0.45)


@gpu
def explain(image, caption, budget, n_candidates, seed, progress=gr.Progress()):
    """Explain one image + caption; returns every output of the page."""
    from matplotlib.figure import Figure  # not pyplot: its global figure list is not thread-safe and keeps every figure

    service = SERVICE
    image, caption, notes_in = _check_inputs(image, caption, service)
    progress(0.05, desc="encoding the caption and the image")

    def report(frac: float, desc: str) -> None:
        progress(0.1 + 0.85 * frac, desc=desc)

    try:
        explainer = service.explainer
        exp = explainer.explain(
            explainer.prepare({"text": caption, "image": image}),
            budget=int(budget),
            n_candidates=int(n_candidates),
            random_state=int(seed),
            progress=report,
        )
    except ValueError as err:
        raise gr.Error(str(err)) from None
    progress(0.97, desc="drawing")
    notes = [feature_locality_note(exp.feature_locality)] if exp.feature_locality else []
    notes += list(notes_in) + list(exp.notes)

    routing = Figure(figsize=(5, 2.6))
    ax = routing.add_subplot(111)
    names = list(exp.routing_weights)
    ax.barh(names, [exp.routing_weights[n] for n in names], color="#4c72b0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("router weight (share of the prediction, 0 to 1)")
    ax.invert_yaxis()
    routing.tight_layout()

    highlights, gallery = {}, []
    text_mod = "text"
    for head in exp.maps:
        scores = np.asarray(exp.maps[head][text_mod], dtype=float)
        top = scores.max() if scores.size and scores.max() > 0 else 1.0
        highlights[head] = [(tok, s / top) for _, tok, s in shown_tokens(exp.tokens[text_mod], scores)]
        gallery.append((_overlay(image, exp.heatmap_array("image", head)), head))

    table = [
        [kind, p.token_a, p.position_b, round(p.sii, 4), round(p.sii_se, 4), round(p.redundancy_gap, 4),
         round(p.redundancy_gap_se, 4)]
        for kind, pairs in (("synergy", exp.synergy_pairs), ("redundancy", exp.redundancy_pairs))
        for p in pairs
    ]
    syn_fig = exp.plot_pairs(image, kind="synergy", k=3)
    red_fig = exp.plot_pairs(image, kind="redundancy", k=3)
    masking_fig = _masking_figure(exp)

    path = Path(tempfile.mkdtemp(prefix="fli2moe-")) / "explanation.json"
    exp.to_json(path)
    label = {k: float(v) for k, v in exp.probabilities.items()}
    roles = "\n".join(f"- **{head}**: {EXPERT_ROLES.get(head, '')}" for head in exp.maps)
    unit = OUTPUT_UNITS.get(exp.output, exp.output)
    status = "\n\n".join(notes + [
        f"Prediction: **{exp.label}** with probability {exp.probabilities[exp.label]:.3f} (0 to 1). SII and RG below "
        f"are in the {unit}.",
        f"Spent {exp.evaluations} of {exp.budget} coalition evaluations (forward passes of the model on masked "
        f"inputs) in {exp.seconds:.1f} s.",
    ])
    progress(1.0, desc="done")
    return (label, routing, highlights.get("mixture", []), *[highlights.get(h, []) for h in HEADS_SHOWN],
            gallery, table, syn_fig, red_fig, masking_fig, str(path), roles, status)


def _masking_figure(exp):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.8))
    ax = fig.add_subplot(111)
    for key, label, style in (("sii", "top pairs by SII", "-o"), ("redundancy_gap", "top pairs by RG", "-s")):
        result = exp.pair_masking.get(key)
        if result is not None and result.steps:
            ax.plot(result.pair_counts, result.ranked_drops, style, label=label)
    result = exp.pair_masking.get("sii")
    if result is not None and result.steps:
        ax.errorbar(result.pair_counts, result.random_means, yerr=[s.random_std for s in result.steps], fmt="--",
                    color="gray", label=f"random pairs (mean ± s.d. of {result.n_random} draws)")
    ax.set_xlabel("pairs masked (both tokens of each)")
    ax.set_ylabel("drop in target\nprobability (0 to 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _region_words() -> str:
    """How the pairs table numbers image regions, from the checkpoint's image grid."""
    from modeling_fli2moe.explain.results import grid_shape

    config = getattr(SERVICE, "config", None)
    image = next((m for m in (config.modalities if config is not None else []) if m["name"] == "image"), None)
    if image is None or not image.get("max_tokens"):
        return "the image grid cell, numbered row by row from 0"
    rows, cols = grid_shape(int(image["max_tokens"]))
    return f"the cell of the {rows} x {cols} image grid, numbered row x {cols} + column from 0"


SERVICE: ExplainerService
HEADS_SHOWN = ["uniqueness_text", "uniqueness_image", "synergy", "redundancy"]


def build_demo() -> gr.Blocks:
    examples = _planted_examples()
    with gr.Blocks(title="FL-I2MoE explainer") as demo:
        gr.Markdown(INTRO)
        if SERVICE.error:
            gr.Markdown(f"**{SERVICE.error}**")
        with gr.Row():
            with gr.Column(scale=1):
                # a File (not gr.Image) so that an unreadable upload reaches our own check and message
                image = gr.File(label="Image (PNG or JPEG)", file_types=["image"], type="filepath", elem_id="input-image")
                preview = gr.Image(label="Your image", interactive=False, height=220)
                caption = gr.Textbox(label="Caption", lines=2, elem_id="caption")
                with gr.Accordion("Settings", open=False):
                    budget = gr.Slider(256, 8192, value=2048, step=256,
                                       label="Budget: coalition evaluations (forward passes on masked inputs)")
                    n_candidates = gr.Slider(2, 16, value=6, step=1,
                                             label="Candidates per modality: words or regions whose pairs are scored")
                    seed = gr.Number(value=0, precision=0, label="Seed (random_state of the Monte Carlo estimates)")
                button = gr.Button("Explain", variant="primary", elem_id="explain-button")
                if examples:
                    gr.Examples(examples=examples, inputs=[image, caption], label="Planted examples")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    label = gr.Label(label="Prediction: probability of each label (0 to 1)", num_top_classes=5)
                    routing = gr.Plot(label="Router weights over the experts (0 to 1, summing to 1)")
                roles = gr.Markdown()
        with gr.Tab("Tokens and regions"):
            shade = "shade = importance, 1 = the head's most important token"
            mixture_text = gr.HighlightedText(label=f"mixture: caption tokens ({shade})", elem_id="tokens-mixture")
            expert_texts = [gr.HighlightedText(label=f"{h}: caption tokens ({shade})") for h in HEADS_SHOWN]
            heatmaps = gr.Gallery(label="Image heatmaps, mixture and each expert (red = the head's most important "
                                        "region, blue = unimportant)", columns=5, height=260, elem_id="heatmaps")
        with gr.Tab("Interacting pairs"):
            unit = OUTPUT_UNITS.get(getattr(SERVICE.explainer, "output", "log_odds"), "log-odds of the predicted label")
            pairs = gr.Dataframe(
                headers=["kind", "token", "region", "SII", "SII s.e.", "RG", "RG s.e."],
                label=(f"Top synergistic and redundant pairs. region: {_region_words()}; SII: Shapley "
                       f"interaction, {unit} (> 0: the pair is worth more together); RG: redundancy gap, {unit} "
                       "(> 0: either one alone carries the evidence); s.e.: Monte Carlo standard error"),
                elem_id="pairs-table", wrap=True,
            )
            with gr.Row():
                synergy_plot = gr.Plot(label=f"Synergistic pairs (token -> region; the number: SII, {unit})")
                redundancy_plot = gr.Plot(label=f"Redundant pairs (token -> region; the number: RG, {unit})")
            masking = gr.Plot(label="Masking the top pairs vs random pairs (this example; drop in the predicted "
                                    "label's probability, 0 to 1)")
        download = gr.File(label="Explanation (JSON)")
        image.change(_preview, inputs=image, outputs=preview)
        button.click(
            explain,
            inputs=[image, caption, budget, n_candidates, seed],
            outputs=[label, routing, mixture_text, *expert_texts, heatmaps, pairs, synergy_plot, redundancy_plot,
                     masking, download, roles, status],
            api_name="explain",
            concurrency_limit=CONCURRENCY,
        )
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


def _planted_examples() -> list[list[str]]:
    """A few planted-benchmark examples (saved as PNG files) for one-click trials."""
    try:
        from modeling_fli2moe.data import make_planted

        ds = make_planted(n_per_kind=10, random_state=123)["test"]
        folder = Path(tempfile.mkdtemp(prefix="fli2moe-examples-"))
        rows = []
        for i, row in enumerate(ds.select(range(min(4, len(ds))))):
            path = folder / f"{row['kind']}-{i}.png"
            row["image"].save(path)
            rows.append([str(path), row["text"]])
        return rows
    except Exception:  # examples are a convenience; the app works without them
        logger.exception("no planted examples")
        return []


SERVICE = ExplainerService(resolve_checkpoint())
demo = build_demo()

if __name__ == "__main__":
    demo.launch(show_error=True, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
