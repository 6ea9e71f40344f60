"""``deploy --stages`` and ``edgepipe report``: real deploys of a real optimize run, the report's three files,
the schema, and the HTML opened in headless Chromium."""

from __future__ import annotations

import itertools
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import artifacts_dir, body_attribute, load
from conftest import run_cli

from edgepipe.reporting.schema import report_schema, schema_errors

QUICK = ["--runs", "50", "--min-seconds", "0.05", "--repeats", "2"]


@pytest.fixture(scope="module")
def reported(optimized_run: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the optimize run, deployed to the local target with every stage, then reported."""
    directory, optimize = optimized_run
    work = tmp_path_factory.mktemp("report")
    run = work / "run"
    shutil.copytree(directory, run)
    deployed = run_cli("deploy", "--target", "local", str(run), "--stages", "--tag", "pr-7", *QUICK)
    assert deployed.returncode == 0, deployed.stderr
    html, md, data = work / "out" / "report.html", work / "out" / "summary.md", work / "out" / "report.json"
    done = run_cli("report", str(run), "--html", str(html), "--md", str(md), "--json", str(data))
    assert done.returncode == 0, done.stderr
    return {"run": run, "optimize": optimize, "deploy": deployed, "report": done, "html": html, "md": md, "json": data}


def test_deploy_stages_measures_every_model_once(reported: dict[str, Any]) -> None:
    run, optimize = reported["run"], reported["optimize"]
    assert (run / "float" / "deploy-local.json").is_file()
    for stage in optimize["stages"]:
        folder = run / Path(stage["tflite"]["path"]).parent
        result = folder / "deploy-local.json"
        if stage["tflite"]["sha256"] == optimize["final"]["sha256"]:
            assert not result.exists()  # the final model's bytes: measured once, by the main deploy
        else:
            record = json.loads(result.read_text())
            assert record["model"]["sha256"] == stage["tflite"]["sha256"]
            made_by = record["provenance"]["optimize"]  # which run, stage, recipe and converter made these bytes
            assert made_by["stage"] == stage["name"] and made_by["final"] is False
            assert made_by["recipe_sha256"] == optimize["provenance"]["recipe_sha256"]
            assert made_by["convert"] == optimize["recipe"]["convert"] and made_by["tools"]["tf-keras"]
            assert record["device"]["timing"]["latency_ms"]["count"] >= 50
    assert "stage" in reported["deploy"].stdout and "float" in reported["deploy"].stdout
    listed = run_cli("history", "--tag", "pr-7:stage-float")
    assert listed.returncode == 0 and "local" in listed.stdout and "stage:float" in listed.stdout


def test_report_json_validates_and_covers_every_stage_and_target(reported: dict[str, Any]) -> None:
    document = json.loads(reported["json"].read_text())
    assert schema_errors(document) == []
    optimize = reported["optimize"]
    names = [s["name"] for s in document["stages"]]
    assert names == ["float", *(s["name"] for s in optimize["stages"])]
    assert [s["final"] for s in document["stages"]].count(True) == 1
    final = next(s for s in document["stages"] if s["final"])
    assert final["model"]["sha256"] == optimize["final"]["sha256"]
    assert final["model"]["gzip_bytes"] == optimize["final"]["gzip_bytes"]
    assert document["targets"][0]["name"] == "local" and document["targets"][0]["emulated"] is False
    float_stage = document["stages"][0]
    assert float_stage["params"] == optimize["analysis"]["float"]["total"]["params"]
    assert float_stage["macs"] == optimize["analysis"]["float"]["total"]["macs"] > 0
    pruned = document["stages"][1]
    assert pruned["nonzero_params"] < 0.7 * pruned["params"]  # 50 % sparsity on the weights, biases dense
    for stage in document["stages"]:
        (deployment,) = stage["deployments"]
        assert deployment["status"] == "passed" and deployment["target"] == "local"
        latency = deployment["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        quantiles = deployment["latency_quantiles_ms"]
        assert len(quantiles) == 101 and quantiles == sorted(quantiles) and quantiles[0] == latency["min"]
        assert deployment["accuracy"] == pytest.approx(stage["host_accuracy"], abs=0.005)


def test_markdown_summary_is_short_and_has_one_row_per_stage(reported: dict[str, Any]) -> None:
    text = reported["md"].read_text()
    document = json.loads(reported["json"].read_text())
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(document["stages"])  # header + stages
    assert len(text.splitlines()) <= 20 and "(final)" in text and "local p50" in text
    assert "report.html" in text


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.svgs += tag == "svg"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value and not value.startswith("#"):
                self.external.append(value)


def test_html_is_self_contained(reported: dict[str, Any]) -> None:
    text = reported["html"].read_text()
    parser = _References()
    parser.feed(text)
    assert parser.external == []
    assert parser.svgs >= 4 and "@import" not in text and "url(http" not in text
    assert "Parity with the host" not in text  # no emulated target here
    # Several stages measured by separate deploys: the page says their latencies are not a paired comparison.
    assert 'class="muted unpaired"' in text and "--baseline B.tflite" in text


@pytest.mark.parametrize("width", [1400, 390])
def test_html_renders_in_headless_chromium_with_its_plots(reported: dict[str, Any], width: int) -> None:
    """At a desktop's width and a phone's; the screenshots stay in test-artifacts/ for a person to look at."""
    screenshot = artifacts_dir() / f"report-{width}.png"
    screenshot.unlink(missing_ok=True)
    page = load(reported["html"], screenshot=screenshot, width=width)
    assert page.console == []
    assert page.page_requests == []
    assert body_attribute(page.dom, "data-report-schema") == "edgepipe.report/5"  # the inline script ran
    assert body_attribute(page.dom, "data-plots-drawn") == "4"  # four SVG plots with a non-zero size on screen
    for plot in ("accuracy_vs_size", "accuracy_vs_latency", "latency_distributions", "layers"):
        assert f'id="plot-{plot}"' in page.dom
    # What a person sees: the page is drawn (not one flat colour) and its plots put coloured marks on it, the
    # targets' markers (blue and orange of the plot palette), not only the black and grey of text and tables.
    from PIL import Image

    with Image.open(screenshot) as image:
        pixels = image.convert("RGB")
        colours = {colour for _, colour in pixels.getcolors(maxcolors=1 << 20) or []}
    assert len(colours) > 50
    saturated = [c for c in colours if max(c) - min(c) > 80]
    assert len(saturated) > 10, "no coloured plot marks on the page"


def test_the_browser_check_sees_script_errors_and_fetches(tmp_path: Path) -> None:
    """The negative control of the test above: the same observations catch what they must catch."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="https://example.com/x.png"><script>notDefined();</script></body></html>')
    seen = load(page)
    assert any("notDefined" in line for line in seen.console)
    assert seen.page_requests == ["https://example.com/x.png"]
    assert body_attribute(seen.dom, "data-plots-drawn") is None


def test_terminal_output_has_a_table_per_target_and_the_report_paths(reported: dict[str, Any]) -> None:
    out = reported["report"].stdout
    assert "edgepipe report:" in out and "local: x86_64" in out
    assert f"HTML report: {reported['html']}" in out.replace("\n", "")
    assert "p50" in out and "(final)" in out


def test_schema_rejects_what_breaks_it(reported: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(report_schema())
    document = json.loads(reported["json"].read_text())
    broken = json.loads(json.dumps(document))
    del broken["stages"][0]["deployments"][0]["latency_ms"]
    assert any("latency_ms" in e for e in schema_errors(broken))
    broken = json.loads(json.dumps(document))
    broken["schema"] = "edgepipe.report/1"  # another version
    assert schema_errors(broken)
    broken = json.loads(json.dumps(document))
    broken["stages"][0]["surprise"] = 1
    assert any("surprise" in e for e in schema_errors(broken))


def test_default_outputs_go_into_the_run_directory_and_a_bad_path_loses_nothing(
    reported: dict[str, Any], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(reported["run"], run)
    done = run_cli("report", str(run))
    assert done.returncode == 0, done.stderr
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in run.iterdir()}
    before = (run / "report.json").read_bytes()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    failed = run_cli("report", str(run), "--json", str(run / "report.json"), "--html", str(blocker / "r.html"))
    assert failed.returncode == 2 and "cannot write" in failed.stderr
    assert not list(run.glob(".report*tmp*")) and not list(tmp_path.glob(".*tmp*"))
    assert (run / "report.json").read_bytes() == before  # all outputs or none: the JSON was not rewritten
    assert f"cannot write {blocker / 'r.html'}" in failed.stderr


def test_report_of_a_run_without_deploys_and_of_a_non_run(optimized_run: tuple[Path, dict], tmp_path: Path) -> None:
    directory, _ = optimized_run
    out = tmp_path / "r.json"
    done = run_cli("report", str(directory), "--json", str(out))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["targets"] == [] and all(s["deployments"] == [] for s in document["stages"])
    assert "no deploy results yet" in done.stdout
    assert not (directory / "report.html").exists()  # only what was asked for
    refused = run_cli("report", str(tmp_path))
    assert refused.returncode == 2 and "not a run directory" in refused.stderr


def test_a_failed_stage_deploy_shows_in_the_report(optimized_run: tuple[Path, dict], tmp_path: Path) -> None:
    """A model that overruns the board's time limit: ModelTimeout (24), recorded, and shown as failed."""
    directory, _ = optimized_run
    run = tmp_path / "run"
    shutil.copytree(directory, run)
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "strict.yaml").write_text(
        "name: strict\ntransport: local\nworkdir: " + str(tmp_path / "board") + "\n"
        "measure: {runs: 10, min_seconds: 60, max_runs: 100000000, repeats: 1, time_limit_s: 1.5}\n"
    )
    env = {"EDGEPIPE_TARGETS_DIR": str(targets)}
    deployed = run_cli("deploy", "--target", "strict", str(run), env=env)
    assert deployed.returncode == 24, deployed.stderr
    assert "measure.time_limit_s" in deployed.stderr and "--eval-samples" in deployed.stderr  # what to change
    assert (run / "deploy-strict.failed.json").is_file() and not (run / "deploy-strict.json").exists()
    done = run_cli("report", str(run), "--md", str(tmp_path / "s.md"), "--json", str(tmp_path / "r.json"), env=env)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    (failed,) = next(s for s in document["stages"] if s["final"])["deployments"]
    assert failed["status"] == "failed" and failed["error"]["class"] == "ModelTimeout"
    assert "failed: ModelTimeout" in (tmp_path / "s.md").read_text()
    assert "ModelTimeout" in done.stdout
    failed_file = run / "deploy-strict.failed.json"  # as a crash leaves it: the runtime never reported itself
    crashed = json.loads(failed_file.read_text())
    crashed["device"].pop("runtime", None)
    failed_file.write_text(json.dumps(crashed))
    page = tmp_path / "r.html"
    assert run_cli("report", str(run), "--html", str(page), env=env).returncode == 0
    assert "runtime not reported" in page.read_text() and "None None" not in page.read_text()


def test_compression_paid_off_is_judged_per_stage(reported: dict[str, Any]) -> None:
    """The float model against the pruned stage (real deploys): smaller in gzip, so it paid off. The final
    (pruned, clustered, QAT) model against the pruned stage as a candidate with the same timing: the pruned
    model is larger and no faster, and the check says so (a warning, not a regression)."""
    from edgepipe.reporting.verdict import VerdictSettings, compare

    run = reported["run"]
    prune_dir = next(p for p in (run / "stages").iterdir() if p.name.endswith("-prune"))
    done = run_cli(
        "compare", "--baseline", str(run / "float" / "deploy-local.json"),
        "--candidate", str(prune_dir / "deploy-local.json"), "--json", str(run.parent / "paid.json"),
    )  # fmt: skip
    verdict = json.loads((run.parent / "paid.json").read_text())
    assert done.returncode == {"pass": 0, "regression": 7}[verdict["status"]], done.stderr  # the code is the verdict
    assert f"HTML report: edgepipe report {run}" in done.stdout.replace("\n", "")  # how to get the page
    paid = next(c for c in verdict["checks"] if c["name"] == "compression paid off")
    assert paid["status"] == "pass" and "gzip" in paid["message"]

    final = json.loads((run / "deploy-local.json").read_text())
    pruned = json.loads((prune_dir / "deploy-local.json").read_text())
    pruned["device"]["timing"] = final["device"]["timing"]  # the same speed: only size can decide
    verdict = compare(final, pruned, VerdictSettings())
    check = next(c for c in verdict.checks if c.name == "compression paid off")
    assert check.status == "warn" and "neither smaller" in check.message and "prune" in check.message


@pytest.fixture(scope="module")
def drawn(reported: dict[str, Any]) -> dict[str, Any]:
    """The report's matplotlib figures themselves (before they become SVG), to check what they show."""
    import json

    from edgepipe.reporting import plots

    figures: dict[str, Any] = {}
    document = json.loads(reported["json"].read_text())
    original = plots._svg
    try:
        for name in ("accuracy_vs_size", "accuracy_vs_latency", "latency_distributions", "layers"):
            plots._svg = lambda fig, name=name: figures.setdefault(name, fig) and ""
            getattr(plots, name)(document)
    finally:
        plots._svg = original
    return {"figures": figures, "document": document}


def test_score_axes_span_at_least_five_points(drawn: dict[str, Any]) -> None:
    for name in ("accuracy_vs_size", "accuracy_vs_latency"):
        low, high = drawn["figures"][name].axes[0].get_ylim()
        assert high - low >= 5.0 and low >= 0 and high <= 101, (name, low, high)


def test_legends_cover_no_point_and_no_bar(drawn: dict[str, Any]) -> None:
    for name in ("accuracy_vs_size", "accuracy_vs_latency", "layers"):
        fig = drawn["figures"][name]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legends = [legend for ax in fig.axes if (legend := ax.get_legend())] + list(fig.legends)
        assert legends, name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), f"{name}: the legend sits on the plot"


def test_every_latency_axis_has_the_same_log_scale(drawn: dict[str, Any]) -> None:
    axes = [drawn["figures"]["accuracy_vs_latency"].axes[0], *drawn["figures"]["latency_distributions"].axes]
    assert [ax.get_xscale() for ax in axes] == ["log"] * len(axes)


def test_latency_tick_labels_never_run_into_each_other(drawn: dict[str, Any]) -> None:
    """Latencies of 5.5 to 20 ms (an emulated board): the labels of a log axis must not overlap."""
    import copy

    from edgepipe.reporting import plots

    document = copy.deepcopy(drawn["document"])
    for stage in document["stages"]:
        for deployment in stage["deployments"]:
            if deployment["latency_quantiles_ms"]:
                count = len(deployment["latency_quantiles_ms"])
                deployment["latency_quantiles_ms"] = list(np.geomspace(5.5, 20.0, count))
    captured: list[Any] = []
    original = plots._svg
    try:
        plots._svg = lambda fig: captured.append(fig) or ""
        plots.latency_distributions(document)
    finally:
        plots._svg = original
    (fig,) = captured
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        boxes = [
            t.get_window_extent(renderer)
            for t in ax.get_xticklabels()
            if t.get_text() and low <= t.get_position()[0] <= high
        ]
        assert len(boxes) >= 2, [t.get_text() for t in ax.get_xticklabels()]
        for left, right in itertools.pairwise(boxes):
            assert left.x1 < right.x0, [t.get_text() for t in ax.get_xticklabels()]


def test_the_layer_plot_names_keras_layers(drawn: dict[str, Any]) -> None:
    labels = [tick.get_text() for tick in drawn["figures"]["layers"].axes[0].get_yticklabels()]
    from edgepipe.examples.digits import tiny_mlp  # the model of the optimized run (conftest.TINY)

    keras_names = {layer.name for layer in tiny_mlp().layers}
    assert labels and all(label.endswith(" (FC)") and label.removesuffix(" (FC)") in keras_names for label in labels)


def test_stage_labels_are_not_clipped(drawn: dict[str, Any]) -> None:
    fig = drawn["figures"]["accuracy_vs_size"]
    texts = [t for t in fig.axes[0].texts]
    assert {t.get_text() for t in texts} >= {"float", "prune", "cluster"}
    assert all(t.get_annotation_clip() is False for t in texts)
    low, high = fig.axes[0].get_ylim()
    for text in texts:  # every labelled point lies inside the axis, away from its edges
        assert low < text.xy[1] < high
