"""report.html (render.page, diagnostics.report, comparison.report) and the figures behind it, on constructed inputs:
the page holds what it is given, embedded, and nothing it would have to fetch."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from mlabel_exp.comparison import report as comparison_report
from mlabel_exp.comparison import figures
from mlabel_exp.render import page as report
from mlabel_exp.diagnostics import report as run_report
from mlabel_exp.comparison.compare import swept_axes
from mlabel_exp.comparison.groups import COLUMNS, Groups


def png(path, colour=(200, 30, 30), size=(24, 16)):
    from PIL import Image

    Image.new("RGB", size, colour).save(path)
    return path


def embedded_images(page: str) -> list[bytes]:
    """The bytes of every image embedded in the page (PNG or JPEG), in order."""
    return [base64.b64decode(m) for m in re.findall(
        r'<img [^>]*src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', page)]


def pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_self_contained(page: str, folder=None) -> None:
    """Nothing the browser would fetch: every src an embedded image, no script or style sheet, no URL with a scheme;
    a link goes to a section of the page (#id, which is there) or to a file beside it (relative, never above its
    folder; present in ``folder`` where given)."""
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert all(re.match(r"data:image/(png|jpeg);base64,", s) for s in sources)
    assert not re.search(r"<script|<link|@import|url\(", page, re.I)
    assert not re.search(r"(https?|file)://", page)
    for href in re.findall(r'\bhref="([^"]*)"', page):
        if href.startswith("#"):
            assert f'id="{href[1:]}"' in page, href
        else:
            assert not href.startswith("/") and ".." not in href.split("/") and ":" not in href, href
            assert folder is None or (folder / href).is_file(), href


def test_page_embeds_every_figure_and_table_row_and_nothing_external(tmp_path):
    images = {f"f{i}.png": png(tmp_path / f"f{i}.png", (40 * i, 10, 10)) for i in range(3)}
    table = pd.DataFrame({"group": ["a <b>", "c"], "mean": [0.51234567, float("nan")], "n": [3, 1]})
    sections = [report.Section("Tables", [report.Table(table, "the caption")]),
                report.Section("Figures", [report.Figure(p, f"caption {n}", n) for n, p in images.items()]),
                report.Section("Empty", [])]
    page = report.render("Title & co", "The verdict sentence.", sections)
    assert "The verdict sentence." in page and "Title &amp; co" in page
    shown = embedded_images(page)  # each file, every pixel (a chart's 256-colour copy loses none of 3 colours), in order
    assert len(shown) == 3 and all((pixels(a) == pixels(p.read_bytes())).all() for a, p in zip(shown, images.values()))
    assert "a &lt;b&gt;" in page and "<td>0.5123</td>" in page and "<b>" not in page  # escaped, 4 decimals
    assert "Empty" not in page  # a section with nothing in it is left out
    assert '<a href="#s-tables">Tables</a> <a href="#s-figures">Figures</a></nav>' in page  # the contents, in order
    assert "href=\"f0.png\"" not in page  # rendered without its folder: no link
    assert_self_contained(page)


def test_a_page_of_photographs_is_a_folded_thumbnail_linked_to_its_file_and_a_chart_its_own_size(tmp_path):
    """What keeps a run's page a few megabytes: a gallery is a JPEG thumbnail of a fixed width inside <details>,
    linked to the file beside the page; a chart keeps its size and pixels (up to its 256-colour copy)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "diagnostics").mkdir()
    photo = tmp_path / "diagnostics" / "gallery.png"
    Image.fromarray(rng.integers(0, 256, (500, 1400, 3), dtype=np.uint8)).save(photo)
    chart = png(tmp_path / "chart.png", (0, 90, 200), size=(900, 300))
    sections = [report.Section("Chart", [report.Figure(chart, "a chart")]),
                report.Section("Galleries", [report.Fold("errors of cat", [report.Figure(photo, "cat", thumbnail=560)])])]
    page = report.write(tmp_path / "report.html", "run", "", sections).read_text()
    shown, thumb = embedded_images(page)
    assert (pixels(shown) == pixels(chart.read_bytes())).all()
    assert pixels(thumb).shape == (200, 560, 3) and thumb[:2] == b"\xff\xd8"  # a JPEG, 560 px wide, the aspect kept
    folded = page[page.index("<details>"):page.index("</details>")]
    assert "<summary>errors of cat</summary>" in folded and 'href="diagnostics/gallery.png"' in folded
    assert len(thumb) < 560 * 200 * 3 / 4 < photo.stat().st_size / 10  # noise: the worst case for a JPEG
    assert_self_contained(page, tmp_path)


def test_diagnostics_sections_render_index_json_in_order_with_galleries_and_maps_folded(tmp_path):
    folder = tmp_path / "diagnostics"
    assert run_report.diagnostics_sections(folder)[0].items == []
    (folder / "activation_maps").mkdir(parents=True)
    for name in ("calibration.png", "gallery_val_00_cat.png", "activation_maps/00_cat.png"):
        png(folder / name)
    pd.DataFrame({"class": ["cat", "dog"], "ECE": [0.125, 0.25]}).to_csv(folder / "calibration.csv", index=False)
    json.dump([{"title": "Calibration", "image": "calibration.png", "caption": "reliability"},
               {"title": "Errors of cat", "image": "gallery_val_00_cat.png", "caption": "the errors"},
               {"title": "Calibration table", "table": "calibration.csv", "caption": "per class"},
               {"title": "Gone", "image": "gone.png", "caption": ""},
               {"title": "where the model looks: cat", "image": "activation_maps/00_cat.png", "caption": "maps"}],
              (folder / "index.json").open("w"))
    main, galleries, maps = run_report.diagnostics_sections(folder)
    page = report.render("run", "", [main, galleries, maps], base=tmp_path)
    assert page.index("Calibration") < page.index("Calibration table") < page.index("Gone")
    assert "reliability" in page and "<td>dog</td>" in page and "gone.png is missing" in page
    assert (galleries.heading, maps.heading) == ("Error galleries (1, folded)", "Activation maps (1, folded)")
    assert [f.summary for f in galleries.items + maps.items] == ["Errors of cat", "where the model looks: cat"]
    assert page.count("<details>") == 2 and 'href="diagnostics/activation_maps/00_cat.png"' in page
    assert_self_contained(page, tmp_path)


def run_folder(tmp_path, with_diagnostics: bool):
    out = tmp_path / "out"
    out.mkdir()
    summary = {"val": {"mAP": 0.61234, "best_epoch": 3, "epochs": 5},
               "tuned": {"mAP": 0.61234, "f1_micro": 0.5, "f1_macro": 0.4567, "precision_macro": 0.25, "CP": 0.25,
                         "CF1": 0.3, "global_threshold": 0.3},
               "test": {"mAP": 0.55556, "f1_micro": 0.44444, "f1_macro": 0.3, "precision_macro": 0.5, "CP": 0.5,
                        "CF1": 0.2, "loss": 0.2}}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "thresholds.json").write_text(json.dumps({"classes": ["cat", "dog"], "global": 0.3, "per_class": [0.2, 0.4]}))
    pd.DataFrame({"class": ["cat", "dog"], "support": [4, 2], "AP": [0.7, 0.5], "threshold": [0.2, 0.4]}).to_csv(
        out / "per_class.csv", index=False)
    for name in ("curves.png", "per_class_ap.png", "pr_curves.png"):
        png(out / name)
    if with_diagnostics:
        (out / "diagnostics").mkdir()
        png(out / "diagnostics" / "gallery_val_00_cat.png", (0, 90, 0))
        png(out / "diagnostics" / "per_class_ap_val.png", (0, 0, 90))
        pd.DataFrame({"class": ["cat", "dog", "eel"], "support": [4, 2, 0], "AP": [0.7, 0.5, float("nan")]}).to_csv(
            out / "diagnostics" / "per_class_ap_val.csv", index=False)
        (out / "diagnostics" / "index.json").write_text(json.dumps(
            [{"title": "Per-class AP with intervals (val)", "image": "per_class_ap_val.png", "caption": "intervals"},
             {"title": "Errors of cat (val)", "image": "gallery_val_00_cat.png", "caption": "the largest losses"}]))
    return out


@pytest.mark.parametrize("with_diagnostics", [False, True])
def test_run_report_shows_the_headline_contents_key_figures_thresholds_and_diagnostics(tmp_path, with_diagnostics):
    out = run_folder(tmp_path, with_diagnostics)
    page = run_report.write_run_report(out, "smallcnn: run x").read_text()
    assert "Best val mAP 0.6123 at epoch 3 of 5; test mAP 0.5556, F1 micro 0.4444" in page
    assert ("Weakest classes (val AP, positives): dog 0.500 (2), cat 0.700 (4)." in page) == with_diagnostics
    assert "<td>cat</td>" in page and "global threshold 0.3" in page
    # the per-class AP with intervals takes the plain one's place; the gallery is folded
    assert len(embedded_images(page)) == 3 + with_diagnostics
    assert ("intervals" in page) == with_diagnostics and ("<details><summary>Errors of cat (val)" in page) == with_diagnostics
    contents = re.search(r'<nav class="toc">(.*?)</nav>', page).group(1)
    headings = re.findall(r'<h2 id="[^"]+">([^<]+)</h2>', page)
    assert re.findall(r">([^<]+)</a>", contents) == headings  # every section, in order
    assert headings[:2] == ["Key figures", "Metrics"]
    assert ("Error galleries (1, folded)" in headings) == with_diagnostics
    assert page.index("<h3>Curves</h3>") < page.index("Metrics</h2>") < page.index("<h3>Precision-recall</h3>")
    assert_self_contained(page, out)


def test_the_run_reports_metrics_table_has_each_metric_once_and_every_column_filled(tmp_path):
    """The ML-GCN names (CP, ...) share a row with their twin; CF1 (F1 of CP and CR, not the mean F1) has its own;
    validation's column holds the threshold-free mAP and the out-of-fold tuned figures."""
    summary = json.loads((run_folder(tmp_path, False) / "summary.json").read_text())
    table = run_report.metrics_table(summary).set_index("metric")
    assert list(table.columns) == ["validation", "test"]
    assert list(table.index) == ["mAP", "f1_micro", "f1_macro", "precision_macro (CP)", "CF1", "global_threshold", "loss"]
    assert table.loc["mAP", "validation"] == 0.61234 and table.loc["precision_macro (CP)", "test"] == 0.5
    assert table.loc["CF1"].tolist() == [0.3, 0.2]


def groups_frame(rows: list[tuple[str, str, int, float]]) -> Groups:
    table = pd.DataFrame([{"group": g, "verdict": v, "n": n, "mean": m, "ci_low": None, "ci_high": None,
                           "values": [m] * n, "run_ids": g} for g, v, n, m in rows], columns=COLUMNS)
    return Groups(table, "constructed", [])


@pytest.mark.parametrize("verdicts, expected", [
    (["worse (p<0.05)", "worse (p<0.05)"], "; every other group is worse at p<0.05."),
    (["not distinguishable from best"] * 2, "but no other group is distinguishable from it"),
    (["worse (p<0.05)", "not distinguishable from best"], "of the 2 other groups, 1 worse at p<0.05, 1 not "
                                                           "distinguishable from it."),
])
def test_verdict_sentence_names_the_best_group_and_what_the_others_are(verdicts, expected):
    found = groups_frame([("model=a", "best", 3, 0.7), ("model=b", verdicts[0], 3, 0.6),
                          ("model=c", verdicts[1], 3, 0.5)])
    sentence = comparison_report.verdict(found)
    assert sentence.startswith("model=a has the best mean best val mAP (0.7000, n=3)") and expected in sentence


def test_comparison_metrics_are_each_groups_numbers_by_rank():
    found = groups_frame([("model=a", "best", 3, 0.7), ("model=b", "worse (p<0.05)", 2, 0.6)])
    found.table.loc[1, "p_value"] = 0.01
    assert comparison_report.metrics(found, 5) == {
        "runs": 5.0, "groups": 2.0, "group_1/n": 3.0, "group_1/mean_best_val_mAP": 0.7,
        "group_2/n": 2.0, "group_2/mean_best_val_mAP": 0.6, "group_2/p_value": 0.01}
    note = comparison_report.description(found, "experiment='x'", 5)
    assert "| group_2 | model=b | 2 | 0.6000 | worse (p<0.05) |" in note and "**Verdict:** model=a" in note


def test_the_pages_class_table_is_class_differences_csv_one_row_a_class():
    rows = [("cat", "b", 0.8, -0.4, -0.6, -0.2, 9, "loses"), ("dog", "b", 0.3, 0.2, -0.1, 0.4, 12, "not distinguishable"),
            ("cat", "c", 0.8, 0.05, 0.01, 0.1, 9, "wins"), ("dog", "c", 0.3, float("nan"), float("nan"), float("nan"), 0,
                                                             "no positive")]
    frame = pd.DataFrame([dict(zip(["class", "group", "versus_AP", "difference", "low", "high", "positives", "verdict"],
                                   r), versus="a") for r in rows])
    table = comparison_report.class_table(frame)
    assert table.columns.tolist() == ["class", "positives", "AP: a (best)", "b - best", "c - best"]
    assert table["class"].tolist() == ["cat", "dog"] and table["AP: a (best)"].tolist() == [0.8, 0.3]
    assert table["b - best"].tolist() == ["-0.4000 [-0.6000, -0.2000] loses",
                                          "+0.2000 [-0.1000, +0.4000] not distinguishable"]
    assert table["c - best"].tolist()[1] == "no positive"


def test_only_a_setting_that_changes_alone_gets_a_regularisation_axis():
    architecture = pd.DataFrame({"model": ["resnet18", "resnet18", "vgg16", "vgg16"],
                                 "dropout_value": [0.0, 0.0, 0.5, 0.5], "weight_decay_value": [1e-4] * 4})
    assert swept_axes(architecture, ["model", "dropout_value"]) == ([], ["dropout_value"])  # each model's default
    both = pd.DataFrame({"model": ["resnet18", "resnet18", "vgg16", "vgg16"], "dropout_value": [0.0, 0.5, 0.0, 0.5],
                         "weight_decay_value": [1e-4] * 4})
    assert swept_axes(both, ["model", "dropout_value"]) == (["dropout_value"], [])


def test_seed_interval_axis_spans_0_to_1_without_intervals_and_holds_every_interval_and_seed_with_them():
    one_seed = groups_frame([("a", "best", 1, 0.25), ("b", "not tested (one seed, no shared images)", 1, 0.21)])
    assert figures._interval_axis(one_seed.table) == (0.0, 1.0)
    seeds = pd.DataFrame({"ci_low": [0.5, 0.3], "ci_high": [0.6, 0.45], "values": [[0.52, 0.58], [0.29, 0.4]]})
    low, high = figures._interval_axis(seeds)
    widest = 0.15  # the padding: the widest interval
    assert (low, high) == pytest.approx((0.29 - widest, 0.6 + widest))


def test_cost_figure_draws_each_group_at_its_time_and_mean(tmp_path):
    frame = pd.DataFrame({"group": ["model=resnet50", "model=vgg16"], "mean": [0.8, 0.78], "ci_low": [0.77, None],
                          "ci_high": [0.83, None], "ms_per_image": [12.0, 30.0]})
    fig = figures.cost(frame)
    ax = fig.axes[0]
    points = {tuple(np.round(line.get_xydata()[0], 6)) for line in ax.get_lines() if len(line.get_xydata()) == 1}
    assert points == {(12.0, 0.8), (30.0, 0.78)} and ax.get_xlim()[0] == 0 and ax.get_ylim() == (0, 1)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_the_runs_curves_take_a_colour_per_group_a_line_style_per_seed_and_a_legend_entry_per_group():
    import matplotlib.pyplot as plt

    history = {"train/loss": [(1, 0.5), (2, 0.4)], "val/loss": [(1, 0.6), (2, 0.5)], "val/mAP": [(1, 0.3), (2, 0.4)]}
    runs = {"a s0": history, "b s0": history, "a s1": history, "b s1": history, "a s2": history}
    groups = {"a s0": "A: dropout=0.5", "a s1": "A: dropout=0.5", "a s2": "A: dropout=0.5", "b s0": "B: dropout=0.1",
              "b s1": "B: dropout=0.1"}
    fig = figures.run_curves(runs, "title", groups)
    lines = fig.axes[0].get_lines()  # one a run, in the order given
    style = {name: (line.get_color(), line.get_linestyle()) for name, line in zip(runs, lines)}
    assert len({style[r][0] for r in runs if r.startswith("a")}) == 1 != len({c for c, _ in style.values()})
    assert len({style[r][1] for r in runs if r.startswith("a")}) == 3  # its seed runs told apart
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["A: dropout=0.5 (3 runs)", "B: dropout=0.1 (2 runs)"]
    plt.close(fig)


def test_the_seed_intervals_title_is_wrapped_inside_the_figure_and_each_group_named_by_its_label():
    import matplotlib.pyplot as plt

    found = groups_frame([("model=resnet18 dropout=heavy weight_decay=strong", "best", 3, 0.7),
                          ("model=vgg16", "worse (p<0.05)", 3, 0.5)])
    long = "paired bootstrap over images (one seed a group: the runs, not the settings) on the 2000 validation " \
           "images every run scored, with unknown labels masked as in each run's own metrics"
    fig = figures.group_intervals(found.table, f"experiment: 6 runs\n{long}", labels=["A", "B"])
    fig.canvas.draw()
    box, title = fig.bbox, fig._suptitle.get_window_extent()
    assert box.x0 <= title.x0 and title.x1 <= box.x1 and title.y1 <= box.y1  # no edge cut off
    assert [t.get_text().split("\n")[0] for t in fig.axes[0].get_yticklabels()][::-1][0].startswith("A: model=resnet18")
    plt.close(fig)
