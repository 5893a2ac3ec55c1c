"""One prepared GPU check: the GPU test subset, then the GPU benchmarks, within a fixed time (default 7.5 min).

For a CUDA machine with torch installed and no internet (``bash benchmarks/gpu_check.sh``). Everything it needs is
made locally: a signing key, a bundle (fp32 + int8) exported from a seeded model together with its checkpoint (so
``torch-cuda`` runs the very weights the ONNX files hold), and a small synthetic reef dataset for real frames and
accuracy. Steps, each with its share of the time budget:

1. machine facts: fingerprint, ``nvidia-smi`` output, which optional packages are importable;
2. ``pytest -m "gpu or tensorrt"`` (JUnit XML and log kept);
3. ``starfish bench run`` over torch-cuda, ort-cuda, tensorrt-fp16, tensorrt-int8, ort-tensorrt and ort-cpu, with a
   run budget so it ends in time (back ends left when it runs out are reported as skipped, not lost);
4. ``summary.md`` naming the card, the test outcome and the benchmark table.

Results go to ``benchmarks/results/gpu/<card>-<UTC time>/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger("benchmarks.gpu_check")

REPO = Path(__file__).resolve().parents[1]
GPU_BACKENDS = "torch-cuda,ort-cuda,tensorrt-fp16,tensorrt-int8,ort-tensorrt,ort-cpu"
OPTIONAL = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "tensorrt",
    "cuda",
    "pynvml",
    "pytest",
    "matplotlib",
    "psutil",
    "typer",
    "pydantic",
    "paho",
    "cryptography",
    "onnxslim",
)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Result directory (default: benchmarks/results/gpu/…)")
    parser.add_argument("--budget", type=float, default=450.0, help="Seconds for everything (default 450 = 7.5 min)")
    parser.add_argument("--size", default="640x384", help="Bundle input WxH for the seeded model (default 640x384)")
    parser.add_argument("--quick", action="store_true", help="Tiny demo network (224x128) instead: minutes -> secs")
    parser.add_argument("--bundle", type=Path, help="Benchmark this bundle instead of a generated one")
    parser.add_argument("--key", type=Path, help="Public key of --bundle")
    parser.add_argument("--checkpoint", type=Path, help="Checkpoint of --bundle (for torch-cuda)")
    parser.add_argument("--data", type=Path, help="Dataset for frames/accuracy instead of a generated one")
    parser.add_argument("--skip-tests", action="store_true", help="Benchmarks only")
    parser.add_argument("--allow-cpu", action="store_true", help="Run even without a CUDA GPU (dry run of the script)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    deadline = Deadline(args.budget)

    sys.path.insert(0, str(REPO))
    from benchmarks.fingerprint import machine_fingerprint, machine_slug

    machine = machine_fingerprint()
    cuda_ok, cuda_note = _torch_cuda()
    if not cuda_ok and not args.allow_cpu:
        logger.error("no usable CUDA GPU: %s (pass --allow-cpu for a dry run)", cuda_note)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or REPO / "benchmarks" / "results" / "gpu" / f"{machine_slug(machine)}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    logger.info("GPU check -> %s (%s; budget %.0f s)", out, machine.get("gpu_name") or "no GPU", args.budget)
    packages = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL}
    (out / "machine.json").write_text(
        json.dumps({"fingerprint": machine, "torch_cuda": cuda_note, "importable": packages}, indent=2, default=str)
        + "\n"
    )
    if shutil.which("nvidia-smi"):
        _run(["nvidia-smi"], out / "nvidia-smi.txt", timeout=30)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    tests = {"status": "skipped", "reason": "--skip-tests"}
    if not args.skip_tests:
        tests = _run_tests(out, env, timeout=min(180.0, deadline.left() * 0.4))

    work = out / "work"
    bench: dict[str, object] = {"status": "not run"}
    try:
        bundle, key, checkpoint = (
            _assets(args, work) if args.bundle is None else (args.bundle, args.key, args.checkpoint)
        )
        data = args.data or _dataset(work / "data")
        budget = deadline.left() - 15  # leave time for the summary
        cmd = [
            sys.executable,
            "-m",
            "starfish_cli",
            "bench",
            "run",
            str(bundle),
            "--backends",
            GPU_BACKENDS,
            "--data",
            str(data),
            "--baseline",
            "torch-cuda",
            "--iterations",
            "50",
            "--repeats",
            "3",
            "--warmup",
            "10",
            "--warmup-s",
            "2",
            "--accuracy-frames",
            "24",
            "--budget",
            f"{budget:.0f}",
            "--timeout",
            "240",
            "-o",
            str(out),
            "--name",
            "bench",
        ]
        if key is not None:
            cmd += ["--key", str(key)]
        if checkpoint is not None:
            cmd += ["--checkpoint", str(checkpoint)]
        code = _run(cmd, out / "bench.log", timeout=budget + 10, env=env)
        bench = {"status": "ok" if code == 0 else f"exit {code}", "json": "bench.json"}
    except Exception as exc:  # noqa: BLE001 - report what broke, keep what was measured
        logger.exception("benchmark step failed")
        bench = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(work, ignore_errors=True)  # bundles and datasets are rebuilt each time; results are kept

    _summary(out, machine, tests, bench)
    logger.info("done: %s", out / "summary.md")
    return 0 if bench["status"] == "ok" and tests.get("status") in ("passed", "skipped", "no tests") else 1


def _torch_cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as exc:
        return False, f"torch not importable: {exc}"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device"
    return True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    logger.info("$ %s (timeout %.0f s)", " ".join(cmd), timeout)
    with log.open("w") as handle:
        try:
            return subprocess.run(
                cmd, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=REPO, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            handle.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
            return 124


def _run_tests(out: Path, env: dict[str, str], timeout: float) -> dict[str, object]:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest not installed"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu or tensorrt",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={out / 'pytest-gpu.xml'}",
        "tests",
    ]
    code = _run(cmd, out / "pytest-gpu.log", timeout=timeout, env=env)
    tail = (out / "pytest-gpu.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
    status = {0: "passed", 5: "no tests", 124: "timed out"}.get(code, f"failed (exit {code})")
    return {"status": status, "summary": tail[0], "log": "pytest-gpu.log"}


def _assets(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    """A signed fp32 + int8 bundle and the checkpoint of the same seeded weights."""
    from dataclasses import replace

    import torch

    from edge_agent.bundle import generate_keypair
    from export.demo import DEMO_CONFIG, untrained_bundle
    from train.checkpoint import save_detector
    from train.model import CLASSES, ModelConfig, build_detector
    from train.module import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        cfg, size = DEMO_CONFIG, None
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        cfg, size = ModelConfig(min_size=height, max_size=width), (width, height)
    key_private, key_public = work / "gpu_check.pem", work / "gpu_check.pub"
    generate_keypair(key_private, key_public)
    logger.info("exporting the seeded model (%s, input %s) to fp32 + int8", cfg.backbone, size or "demo")
    untrained_bundle(work / "bundle", key_private, cfg=cfg, input_size=size, int8=True, seed=0)
    torch.manual_seed(0)  # the same seed and config as untrained_bundle: identical weights
    model = build_detector(replace(cfg, pretrained=False)).eval()
    info = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "architecture": "model_config",
        "classes": list(CLASSES),
        "model_config": cfg.to_dict(),
    }
    checkpoint = save_detector(model, info, work / "seeded.ckpt")
    return work / "bundle", key_public, checkpoint


def _dataset(root: Path) -> Path:
    from train.synth import generate_dataset

    generate_dataset(root, videos=1, frames=24, width=1280, height=720, seed=3, workers=1)
    return root


def _summary(out: Path, machine: dict, tests: dict, bench: dict) -> None:
    lines = [
        f"# GPU check on {machine.get('gpu_name') or 'no GPU'}",
        "",
        f"- when: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- GPU: {machine.get('gpu_name')}, driver {machine.get('gpu_driver')}, compute capability "
        f"{machine.get('gpu_compute_capability')}",
        f"- CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')}, TensorRT {machine.get('tensorrt')}, "
        f"onnxruntime {machine.get('onnxruntime')} ({', '.join(machine.get('onnxruntime_providers') or [])}), "
        f"torch {machine.get('torch')}",
        f"- CPU: {machine.get('cpu_model')} ({machine.get('cpu_logical_cores')} threads)",
        f"- GPU tests (`pytest -m 'gpu or tensorrt'`): {tests.get('status')} {tests.get('summary', '')}".rstrip(),
        f"- benchmark: {bench.get('status')} {bench.get('reason', '')}".rstrip(),
        "",
    ]
    table = out / "bench.md"
    if table.is_file():
        lines += ["## Benchmark", "", table.read_text()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
