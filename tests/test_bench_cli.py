"""`starfish bench` end to end on a tiny bundle: every back end available here runs through the real CLI (worker
processes, real onnxruntime and PyTorch, real synthetic frames); unavailable ones are reported as skipped with their
reason; the JSON / CSV / PNG outputs follow their schema; `compare` gates on a planted 2x regression."""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

from benchmarks.report import CSV_COLUMNS, read_json
from benchmarks.schema import BenchReport
from starfish_cli import app
from tests.cli_text import flatten
from tests.helpers.run_if import requires_cuda

pytest.importorskip("torch", reason="the tiny bundle and the torch-cpu back end need the `train` extra")
pytest.importorskip("onnxruntime", reason="the ort-* back ends need the `edge` extra")

# ort-cpu-int8-u8 (the int8_cpu variant) is the headline CPU back end: the one the README's table leads with.
HERE_BACKENDS = ("torch-cpu", "ort-cpu", "ort-cpu-int8", "ort-cpu-int8-u8")
ALL_BACKENDS = (*HERE_BACKENDS, "torch-cuda", "ort-cuda", "tensorrt-fp16", "tensorrt-int8")
FAST = ["--warmup", "1", "--warmup-s", "0", "--iterations", "3", "--repeats", "2", "--pool-frames", "4"]


class BenchBundle(NamedTuple):
    path: Path
    public_key: Path
    checkpoint: Path


class BenchRun(NamedTuple):
    report: BenchReport
    json_path: Path
    csv_path: Path
    png_path: Path
    output: str


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def bench_bundle(tmp_path_factory: pytest.TempPathFactory, bundle_keys) -> BenchBundle:  # noqa: ANN001
    """The tiny demo network as a signed bundle with fp32, int8 and int8_cpu variants, plus its PyTorch checkpoint."""
    import torch

    from export.demo import DEMO_CONFIG, untrained_bundle
    from train.checkpoint import save_detector
    from train.model import CLASSES, build_detector
    from train.module import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

    root = tmp_path_factory.mktemp("bench-bundle")
    untrained_bundle(root / "bundle", bundle_keys.private, int8=True, cpu_int8=True, seed=0)
    # Same seed and config as untrained_bundle: the checkpoint holds the very weights the ONNX files were exported
    # from, so torch-cpu and ort-cpu must agree on accuracy.
    torch.manual_seed(0)
    model = build_detector(replace(DEMO_CONFIG, pretrained=False)).eval()
    info = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "architecture": "model_config",
        "classes": list(CLASSES),
        "model_config": DEMO_CONFIG.to_dict(),
    }
    checkpoint = save_detector(model, info, root / "tiny.ckpt")
    return BenchBundle(root / "bundle", bundle_keys.public, checkpoint)


def _invoke(args: list[str]) -> object:
    return CliRunner().invoke(app, ["bench", *args], catch_exceptions=False)


def _run_args(
    bundle: BenchBundle,
    data: Path,
    out: Path,
    name: str,
    backends: str,
    *options: str,
    checkpoint: Path | None = None,
    frames: int = 2,
    timing: tuple[str, ...] = tuple(FAST),
) -> list[str]:
    """`starfish bench BUNDLE` on the tiny bundle: key, back ends, data, accuracy frames, output name, timing."""
    args = [str(bundle.path), "--key", str(bundle.public_key), "--backends", backends]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    args += ["--data", str(data), "--accuracy-frames", str(frames), "-o", str(out), "--name", name]
    return [*args, *options, *timing]


@pytest.fixture(scope="module")
def bench_run(bench_bundle: BenchBundle, synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    out = tmp_path_factory.mktemp("bench-out")
    # `starfish bench BUNDLE …` (no `run`): the spelling the docs use.
    args = _run_args(
        bench_bundle,
        synthetic_dataset,
        out,
        "tiny",
        ",".join(ALL_BACKENDS),
        *("--video-ids", "1,2", "--threads", "1", "--baseline", "ort-cpu"),
        checkpoint=bench_bundle.checkpoint,
        frames=6,
    )
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    return BenchRun(read_json(out / "tiny.json"), out / "tiny.json", out / "tiny.csv", out / "tiny.png", result.output)


def test_available_backends_run_and_report_every_measure(bench_run: BenchRun, bench_bundle: BenchBundle) -> None:
    report = bench_run.report
    assert [r.backend for r in report.results] == list(ALL_BACKENDS)
    assert report.settings.threads == 1 and report.settings.iterations == 3 and report.settings.repeats == 2
    assert report.settings.frame_source.endswith("(videos 1,2)")
    assert report.model.macs and report.model.macs > 10**7, report.model.macs_method
    assert report.peak.values_gflops.get("cpu_fp32", 0) > 0
    for name in HERE_BACKENDS:
        r = report.result(name)
        assert r.status == "ok", f"{name}: {r.reason}"
        assert r.load_s > 0
        assert 0 < r.latency.p50_ms <= r.latency.p90_ms <= r.latency.p99_ms
        assert r.latency.p50_min_ms <= r.latency.p50_ms <= r.latency.p50_max_ms
        assert r.latency.samples == 3 and r.latency.repeats == 2
        assert r.throughput.batch == 1 and r.throughput.fps > 0
        assert r.peak_rss_mb > r.base_rss_mb > 0
        assert r.model_size_bytes == Path(r.model_file).stat().st_size
        assert r.accuracy.frames == 6 and 0 <= r.accuracy.f2 <= 1 and r.accuracy.score_threshold == 0.5
        assert r.achieved_gflops > 0 and r.peak_fraction > 0 and r.peak_key == f"cpu_{r.precision}"
        assert r.speedup_vs_baseline > 0
    assert report.result("ort-cpu").speedup_vs_baseline == 1.0
    assert report.result("torch-cpu").threads["torch_intra_op"] == 1
    # torch's FLOP counter on the source model and the ONNX graph count agree on the same network.
    assert report.result("torch-cpu").details["macs"] == pytest.approx(report.model.macs, rel=0.01)
    assert report.result("torch-cpu").model_file == str(bench_bundle.checkpoint)
    assert report.result("ort-cpu").variant == "fp32" and report.result("ort-cpu-int8").variant == "int8"
    assert report.result("ort-cpu").details["providers"][0] == "CPUExecutionProvider"
    # The int8 variant is the smaller file: the CLI reports each back end's own model.
    assert report.result("ort-cpu-int8").model_size_bytes < report.result("ort-cpu").model_size_bytes / 2
    # Same network, same frames, same pre-processing: the PyTorch source and its ONNX export agree.
    torch_acc, ort_acc = report.result("torch-cpu").accuracy, report.result("ort-cpu").accuracy
    assert torch_acc.f2 == pytest.approx(ort_acc.f2, abs=0.02)
    assert torch_acc.best_f2 == pytest.approx(ort_acc.best_f2, abs=0.02)


def test_unavailable_backends_are_skipped_with_their_reason(bench_run: BenchRun) -> None:
    report = bench_run.report
    reasons = {r.backend: r.reason for r in report.results if r.status == "skipped"}
    if not _cuda():
        assert "CUDA" in reasons["torch-cuda"]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "CUDAExecutionProvider" in reasons["ort-cuda"]
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT" in reasons["tensorrt-fp16"] and "TensorRT" in reasons["tensorrt-int8"]
    for name, reason in reasons.items():
        assert reason, f"{name} skipped without a reason"
        assert f"{name} skipped: {reason[:30]}" in flatten(bench_run.output)
    for r in report.results:
        if r.status != "ok":
            assert r.latency is None and r.speedup_vs_baseline is None


def test_json_csv_and_chart_follow_their_schema(bench_run: BenchRun) -> None:
    raw = json.loads(bench_run.json_path.read_text())
    assert raw["schema_version"] == 1 and raw["kind"] == "starfish-bench"
    assert BenchReport.model_validate(raw) == bench_run.report
    machine = raw["machine"]
    for key in (
        "cpu_model",
        "cpu_logical_cores",
        "gpu_name",
        "gpu_driver",
        "cuda",
        "cudnn",
        "tensorrt",
        "onnxruntime",
        "torch",
        "l4t",
        "jetpack",
        "power_mode",
        "fingerprint_id",
    ):
        assert key in machine, f"fingerprint lacks {key}"
    assert machine["onnxruntime"] and machine["torch"]

    with bench_run.csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [row["backend"] for row in rows] == list(ALL_BACKENDS)
    by_name = {row["backend"]: row for row in rows}
    ort = bench_run.report.result("ort-cpu")
    assert float(by_name["ort-cpu"]["p50_ms"]) == pytest.approx(ort.latency.p50_ms, abs=0.01)
    assert float(by_name["ort-cpu"]["f2"]) == pytest.approx(ort.accuracy.f2, abs=1e-4)
    assert by_name["tensorrt-fp16"]["status"] == "skipped" or by_name["tensorrt-fp16"]["p50_ms"]

    assert bench_run.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ort-cpu | ok |" in bench_run.json_path.with_suffix(".md").read_text()


def _scaled(report: BenchReport, factor: float) -> BenchReport:
    """A copy whose every ok back end is ``factor`` times slower."""
    data = report.model_dump(mode="json")
    for row in data["results"]:
        if row["status"] != "ok":
            continue
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "p50_min_ms", "p50_max_ms"):
            row["latency"][key] *= factor
        for key in ("fps", "fps_min", "fps_max"):
            row["throughput"][key] /= factor
    return BenchReport.model_validate(data)


def test_compare_flags_a_planted_2x_regression_and_passes_an_identical_pair(
    bench_run: BenchRun, tmp_path: Path
) -> None:
    slow = tmp_path / "slow.json"
    slow.write_text(_scaled(bench_run.report, 2.0).model_dump_json())
    same = tmp_path / "same.json"
    same.write_text(bench_run.json_path.read_text())

    identical = _invoke(["compare", str(bench_run.json_path), str(same), "--tolerance", "10%"])
    assert identical.exit_code == 0, identical.output
    assert "no regression" in identical.output

    regressed = _invoke(["compare", str(bench_run.json_path), str(slow), "--tolerance", "10%"])
    assert regressed.exit_code == 1, regressed.output
    flat = flatten(regressed.output)
    for name in HERE_BACKENDS:
        assert f"{name} p50_ms" in flat and f"{name} fps" in flat
    # A generous tolerance lets the same pair through: the gate is the tolerance, not any difference.
    lenient = _invoke(["compare", str(bench_run.json_path), str(slow), "--tolerance", "150%"])
    assert lenient.exit_code == 0, lenient.output
    # The other direction is an improvement, not a regression.
    faster = _invoke(["compare", str(slow), str(bench_run.json_path), "--tolerance", "10%"])
    assert faster.exit_code == 0 and "improved" in faster.output


def test_compare_flags_a_backend_that_stopped_running(bench_run: BenchRun, tmp_path: Path) -> None:
    data = bench_run.report.model_dump(mode="json")
    row = next(r for r in data["results"] if r["backend"] == "ort-cpu-int8")
    row.update(status="failed", reason="RuntimeError: boom", latency=None, throughput=None, accuracy=None)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    result = _invoke(["compare", str(bench_run.json_path), str(broken)])
    assert result.exit_code == 1
    assert "ort-cpu-int8 status (ran in base, now failed" in flatten(result.output)


def test_compare_rejects_bad_input(bench_run: BenchRun, tmp_path: Path) -> None:
    not_a_result = tmp_path / "other.json"
    not_a_result.write_text(json.dumps({"hello": 1}))
    result = _invoke(["compare", str(bench_run.json_path), str(not_a_result)])
    assert result.exit_code == 2 and "not a starfish bench result" in result.output
    result = _invoke(["compare", str(bench_run.json_path), str(bench_run.json_path), "--tolerance", "ten"])
    assert result.exit_code == 2 and "10%" in result.output


def test_a_broken_backend_fails_alone(bench_bundle: BenchBundle, synthetic_dataset: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    timing = ("--warmup", "0", "--warmup-s", "0", "--iterations", "2", "--repeats", "1")
    args = _run_args(
        bench_bundle,
        synthetic_dataset,
        tmp_path,
        "broken",
        "torch-cpu,ort-cpu",
        *("--baseline", "torch-cpu", "--threads", "1", "--no-peak", "--no-chart"),
        checkpoint=junk,
        timing=timing,
    )
    result = _invoke(["run", *args])
    assert result.exit_code == 0, result.output
    report = read_json(tmp_path / "broken.json")
    torch_row, ort_row = report.results
    assert torch_row.status == "failed" and "junk.ckpt" in torch_row.reason
    assert ort_row.status == "ok" and ort_row.speedup_vs_baseline is None  # baseline torch-cpu did not run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "ort-cpu,warp-drive"], "unknown back end(s) warp-drive"),
        (["--backends", "ort-cpu", "--baseline", "torch-cpu", "--clip", "{tmp}/x.mp4"], "not among --backends"),
        (["--backends", "ort-cpu", "--video-ids", "7", "--data", "{data}"], "no frames of video(s) [7]"),
        (["--backends", "ort-cpu", "--video-ids", "one"], "video ids must be integers"),
        (["--backends", "ort-cpu", "--key", "{other_key}", "--data", "{data}"], "refused"),
    ],
)
def test_bad_options_fail_with_a_clear_message(
    bench_bundle: BenchBundle,
    synthetic_dataset: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    from edge_agent.bundle import generate_keypair

    other = tmp_path / "other.pub"
    generate_keypair(tmp_path / "other.pem", other)
    (tmp_path / "x.mp4").touch()  # --clip must exist; the baseline check fails before it is read
    args = [a.format(data=synthetic_dataset, other_key=other, tmp=tmp_path) for a in args]
    key = [] if "--key" in args else ["--key", str(bench_bundle.public_key)]
    result = CliRunner().invoke(app, ["bench", str(bench_bundle.path), *key, *args, "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert message in flatten(result.output)


@pytest.mark.gpu
@requires_cuda
def test_gpu_backends_run_or_say_why(bench_bundle: BenchBundle, synthetic_dataset: Path, tmp_path: Path) -> None:
    """On a CUDA machine: torch-cuda runs with its GPU memory measured; the onnxruntime / TensorRT GPU back ends run
    too, or are skipped with a reason (their packages are optional) — none fails."""
    gpu = ("torch-cuda", "ort-cuda", "ort-tensorrt", "tensorrt-fp16", "tensorrt-int8")
    args = _run_args(
        bench_bundle, synthetic_dataset, tmp_path, "gpu", ",".join(gpu), checkpoint=bench_bundle.checkpoint, frames=4
    )
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    report = read_json(tmp_path / "gpu.json")
    torch_cuda = report.result("torch-cuda")
    assert torch_cuda.status == "ok", torch_cuda.reason
    assert torch_cuda.peak_gpu_mb and torch_cuda.peak_gpu_mb > 0 and torch_cuda.device == "cuda"
    assert report.machine["gpu_name"] and report.peak.values_gflops.get("gpu_fp32", 0) > 0
    for row in report.results:
        assert row.status != "failed", f"{row.backend}: {row.reason}"
        if row.status == "ok":
            assert row.latency.p50_ms > 0 and row.peak_key.startswith("gpu_")


def test_backends_lists_only_what_it_was_asked() -> None:
    result = _invoke(["backends", "--backends", "ort-cpu-int8-u8,torch-cuda"])
    assert result.exit_code == 0, result.output
    flat = flatten(result.output)
    assert "ort-cpu-int8-u8" in flat and "torch-cuda" in flat
    for other in ("ort-cpu-int8 ", "ort-cuda", "tensorrt-fp16", "tensorrt-int8", "torch-cpu"):
        assert other not in flat, other
    # No bundle is given: a library-level check, so the CPU back end is available (not "bundle has no variant").
    assert "available" in flat and "bundle has no" not in flat
    bad = _invoke(["backends", "--backends", "warp-drive"])
    assert bad.exit_code == 2 and "unknown back end(s) warp-drive" in flatten(bad.output)


def test_a_reference_bundle_runs_in_the_same_run_and_is_the_baseline(
    bench_bundle: BenchBundle, synthetic_dataset: Path, tmp_path: Path, bundle_keys
) -> None:  # noqa: ANN001
    from export.demo import untrained_bundle

    reference = tmp_path / "reference"
    untrained_bundle(reference, bundle_keys.private, int8=False, cpu_int8=True, seed=1)
    args = _run_args(
        bench_bundle,
        synthetic_dataset,
        tmp_path,
        "ref",
        "ort-cpu-int8-u8",
        *("--reference", str(reference), "--reference-label", "unpruned", "--baseline", "ort-cpu@unpruned"),
        *("--threads", "1", "--no-peak", "--no-chart"),
    )
    result = _invoke(["run", *args])
    assert result.exit_code == 0, result.output
    report = read_json(tmp_path / "ref.json")
    rows = {r.backend: r for r in report.results}
    assert set(rows) == {"ort-cpu-int8-u8", "ort-cpu@unpruned", "ort-cpu-int8-u8@unpruned"}
    assert all(r.status == "ok" for r in rows.values()), [(r.backend, r.reason) for r in rows.values()]
    assert report.settings.baseline == "ort-cpu@unpruned"
    base = rows["ort-cpu@unpruned"].latency.p50_ms
    ours = rows["ort-cpu-int8-u8"]
    assert ours.speedup_vs_baseline == pytest.approx(base / ours.latency.p50_ms, rel=1e-2)
    assert rows["ort-cpu@unpruned"].variant == "fp32" and rows["ort-cpu-int8-u8@unpruned"].variant == "int8_cpu"
    assert rows["ort-cpu@unpruned"].details["macs"] > 0
    bad = _invoke(["run", str(bench_bundle.path), "--reference", str(reference), "--baseline", "ort-cuda@x"])
    assert bad.exit_code == 2 and "not among --backends" in flatten(bad.output)
