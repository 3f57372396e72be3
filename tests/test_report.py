"""`fli2moe explain` on a small FL-I2MoE and its dense baseline: the JSON numbers, and `report.html` (self-contained,
every table header says what its numbers mean), opened in a real headless Chromium with every figure loaded."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from modeling_fli2moe.cli import main as cli_main
from modeling_fli2moe.data import make_planted, save_planted
from modeling_fli2moe.report import feature_locality_note, write_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
TINY = ["hidden_size=16", "router_hidden_size=16", "num_heads=2", "training.num_train_epochs=1",
        "training.per_device_train_batch_size=8", "training.bf16=false", "training.disable_tqdm=true"]
N_EXAMPLES = 2
EXPERTS = {"uniqueness_text", "uniqueness_image", "synergy", "redundancy"}


def _contextual_image_config(name: str, folder: Path) -> Path:
    """The planted run config with EfficientNet's whole-image feature map as image tokens: one encoder pass per
    image instead of one per grid cell (fast to cache), and contextual features, whose leak the report names."""
    cfg = json.loads((ROOT / "hub_configs" / f"{name}.json").read_text())
    image = next(m for m in cfg["modalities"] if m["name"] == "image")
    image["encoder"]["tokens"] = "map"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    save_planted(make_planted(n_per_kind=10, random_state=0), root / "data")
    common = ["--data-dir", str(root / "data"), "--cache-dir", str(root / "cache")]
    for name in ("planted", "planted_dense"):
        config = _contextual_image_config(name, root)
        assert cli_main(["train", "--config", str(config), "--output-dir", str(root / name), *common, *TINY]) == 0
    assert cli_main(["explain", "--checkpoint", str(root / "planted"), "--dense", str(root / "planted_dense"), *common,
                     "--limit", str(N_EXAMPLES), "--budget", "512", "--output-dir", str(root / "explain")]) == 0
    return root / "explain"


class _Page(HTMLParser):
    """The tags the checks need: images, table headers (with their unit lines), links and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.headers: list[str] = []
        self.external: list[str] = []
        self._th: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag == "th":
            self._th = []
        if tag in ("script", "link", "iframe") or (tag != "a" and any(k in a for k in ("src", "href"))
                                                   and not (a.get("src") or "").startswith("data:")):
            self.external.append(f"<{tag} {a}>")

    def handle_data(self, data):
        if self._th is not None:
            self._th.append(data)

    def handle_endtag(self, tag):
        if tag == "th" and self._th is not None:
            self.headers.append(" ".join(t.strip() for t in self._th if t.strip()))
            self._th = None


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def test_explain_writes_the_numbers_of_both_models(explained):
    report = json.loads((explained / "explain_report.json").read_text())
    assert report["n_examples"] == N_EXAMPLES and set(report["models"]) == {"fl_i2moe", "dense"}
    agg, dense = report["models"]["fl_i2moe"], report["models"]["dense"]
    assert set(agg["faithfulness"]) == {"mixture", *EXPERTS}
    assert "comprehensiveness_gap" in agg["faithfulness"]["mixture"]["text"]
    curve = agg["faithfulness_curves"]["mixture"]["image"]
    assert curve["k_percent"] == [5, 10, 15, 20, 25] and len(curve["random_sufficiency_std"]) == 5
    assert set(agg["pair_masking"]["sii"]) >= {"1", "2", "4", "8"}
    step = agg["pair_masking"]["sii"]["1"]
    assert step["n"] == N_EXAMPLES and "test" in step and step["ranked_ci"][0] <= step["ranked_drop"] <= step["ranked_ci"][1]
    assert set(agg["routing_weights"]) == EXPERTS
    assert abs(sum(w["mean"] for w in agg["routing_weights"].values()) - 1) < 1e-4
    assert set(dense["routing_weights"]) == {"dense"} and dense["routing_weights"]["dense"]["mean"] == pytest.approx(1)
    assert report["feature_locality"]["fl_i2moe"] == {"text": "local", "image": "contextual"}
    assert (explained / "pair_masking.png").stat().st_size > 1000
    examples = json.loads((explained / "examples.json").read_text())
    assert [e["index"] for e in examples] == list(range(N_EXAMPLES))  # the first of each kind (2 kinds among 2)
    assert len({e["kind"] for e in examples}) == N_EXAMPLES
    first = examples[0]
    assert set(first["explanations"]) == {"fl_i2moe", "dense"}
    # the cache holds features only: the drawn examples' tokens are the caption's word pieces, not placeholders
    caption = first["inputs"]["text"]["text"]
    tokens = first["explanations"]["fl_i2moe"]["tokens"]["text"]
    assert tokens[0] == "[CLS]" and " ".join(t for t in tokens if not t.startswith("[")).replace(" ##", "") == caption
    assert (explained / first["inputs"]["image"]["image"]).is_file()


def test_report_is_self_contained_and_says_what_its_numbers_mean(explained):
    text, page = _parse(explained / "report.html")
    assert not page.external, page.external[:3]  # nothing is fetched: every figure is inside the file
    assert page.images
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:40]
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as png:
            assert png.width > 100 and png.height > 100
    alts = [img["alt"] for img in page.images]
    for title in ("FL-I2MoE", "Dense baseline"):  # side by side: every dataset-level figure for both models
        for figure in ("faithfulness curves", "pair masking", "routing weights"):
            assert alts.count(f"{figure} of {title}") == 1, (figure, title)
        assert alts.count(f"image heatmaps of {title}") == N_EXAMPLES
    assert text.count('<section class="example">') == N_EXAMPLES
    # every table column has its meaning or unit in words under its name
    assert page.headers and all(len(h.split()) >= 2 for h in page.headers), [h for h in page.headers if len(h.split()) < 2]
    for words in ("drop in target probability", "normalised entropy", "Wilcoxon", "95 % confidence",
                  "router's weight", "log-odds of the predicted label", "coalition evaluations"):
        assert words in text, words
    assert "Features (text: local, image: contextual)" in text
    assert "Here the image features are contextual: masking a token&#x27;s feature leaves its evidence" in text
    # the page is a function of the files next to it: writing it again gives the same page
    assert write_report(explained).read_text(encoding="utf-8") == text


def test_feature_locality_note_says_where_evidence_leaks():
    local = feature_locality_note({"text": "local", "image": "local"})
    assert "contextual: every token has seen the whole input" in local.lower() and "Here the" not in local
    leaky = feature_locality_note({"text": "contextual", "image": "local"})
    assert "Here the text features are contextual" in leaky and "understate" in leaky
    assert "cannot be ruled out" in feature_locality_note({"text": "unknown"})
    assert feature_locality_note({}) == ""


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_report_opens_in_chromium_with_every_figure(explained):
    from playwright.sync_api import sync_playwright

    _, page_tags = _parse(explained / "report.html")
    shots = ROOT / "outputs" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("requestfailed", lambda req: errors.append(req.url))
            page.goto((explained / "report.html").as_uri(), wait_until="load")
            images = page.evaluate(
                "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,"
                " shown: i.getBoundingClientRect().width}))"
            )
            assert len(images) == len(page_tags.images)
            broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0 and i["shown"] > 0)]
            assert not broken, broken
            assert page.locator("h2").count() == 6 and page.locator("table").count() >= 10
            assert not errors, errors
            page.screenshot(path=str(shots / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "report.png").stat().st_size > 50_000
