"""``ssdxl compare --metrics`` with random metric networks in the layout MetricSuite reads."""

import json

import pytest
from typer.testing import CliRunner

from ssdxl.cli.main import app

metrics = pytest.importorskip("ssdxl.evaluation.metrics")
runner = CliRunner()
PROMPT = "a small yellow star at the top on a black background"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return metrics.write_random_weights(tmp_path_factory.mktemp("metric-weights"), metrics.METRICS)


def test_every_metric_per_model_against_the_reference_model(weights, tmp_path):
    out = tmp_path / "grid.png"
    result = run(
        "compare", PROMPT, "-m", "shapes", "-m", "shapes-ssd1b", "--seeds", "1,2", "--steps", 2, "-o", out, "-q",
        "--metrics", "fid,is,clip,lpips", "--metrics-weights", weights, "--reference-model", "shapes",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    reference, student = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert set(reference["metrics"]) == set(student["metrics"]) == {"fid", "is", "clip", "lpips"}
    assert reference["metrics"]["lpips"] == 0 and student["metrics"]["lpips"] > 0  # pairs: same prompt and seed
    assert student["metrics"]["fid"] > reference["metrics"]["fid"]
    assert " fid | is | clip | lpips |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "fid"], "--reference-model"),
        (["--metrics", "is", "--reference-model", "nobody"], "not a model label"),
        (["--metrics", "sharpness"], "unknown metric"),
        (["--metrics", "clip", "--metrics-weights", "/nonexistent"], "not found"),
        (["--metrics", "is", "--metrics-weights", "/nonexistent"], "at least two images a row"),
    ],
)
def test_metric_mistakes_exit_2_before_generating(args, message, weights):
    extra = [] if "--metrics-weights" in args else ["--metrics-weights", weights]
    result = run("compare", PROMPT, "-m", "shapes", *args, *extra)
    assert result.exit_code == 2 and message in result.output
