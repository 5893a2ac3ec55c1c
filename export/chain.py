"""`starfish export all`: prune -> fine-tune -> fp32 ONNX -> INT8 ONNX -> parity/accuracy -> signed bundle -> report.

One function, `run_chain`, that tests and the CLI both call. Every variant is measured the same way: letterboxed
frames at the deployment size, CPU, the same thread count, F2 / mAP@0.5 on the held-out video of the checkpoint's
own training split.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import Counting, InputSpec, TrainingInfo, VariantSource, load_private_key, write_bundle
from edge_agent.bundle.loader import load_bundle
from edge_agent.bundle.manifest import CPU_INT8_VARIANT, MANIFEST_NAME, parse_manifest
from export import checks
from export.counting import ClipSet, calibrate
from export.fp16 import FP16_VARIANT, convert_fp16
from export.golden import DEFAULT_GOLDEN_FRAMES, encode_frames, frames_from_records, random_frames, record_golden
from export.onnx_export import ExportError, default_input_size, export_onnx
from export.profile import conv_kernels, op_time_profile, optimized_op_counts
from export.provenance import MODEL_NAME, config_digest
from export.prune import PruneConfig, model_stats, prune_detector, with_test_proposals
from export.quantize import DEFAULT_CALIBRATION_FRAMES, calibration_tensors, quantize_int8, random_calibration_frames
from export.runners import DEFAULT_THREADS, onnx_runner, torch_runner
from export.source import SourceModel, load_source, save_pruned

logger = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"
REFERENCE_DIR = "reference-unpruned"
# INT8 agreement is compared on confident detections. Not the operating threshold: a well-trained model's sits near
# 1.0, and above it (plus the 0.1 score tolerance) there is nothing left to compare.
INT8_AGREEMENT_FLOOR = 0.5


@dataclass
class ChainOptions:
    checkpoint: Path | None  # None: untrained demo model (DEMO_CONFIG)
    out: Path
    private_key: Path
    data_root: Path | None = None  # default: the checkpoint's own training data root
    ood_root: Path | None = None  # default: the checkpoint's own data.ood_root (None there: thresholds on ID data)
    prune: PruneConfig = field(default_factory=PruneConfig)
    fine_tune_epochs: int = 1
    fine_tune_steps: int | None = None  # a step budget instead of epochs
    fine_tune_select: str | None = None  # keep the best validation's weights by this metric (train.api.fine_tune)
    # An already pruned and fine-tuned checkpoint of this source (`export prune`): reused instead of pruning again.
    pruned_checkpoint: Path | None = None
    input_size: tuple[int, int] | None = None
    calibration_frames: int = DEFAULT_CALIBRATION_FRAMES
    calibration_method: str = "minmax"
    parity_frames: int = 20
    eval_frames: int | None = None  # cap on held-out frames for F2/mAP (None: all)
    latency_runs: int = 30
    threads: int = DEFAULT_THREADS
    version: int | None = None
    keep_fp32: bool = True
    # A second INT8 model with uint8 activations for onnxruntime on CPUs (the `int8` one is TensorRT's).
    cpu_int8: bool = True
    fine_tune_overrides: dict[str, Any] = field(default_factory=dict)
    # The unpruned model through ONNX and INT8 too, so pruning's and INT8's own contributions are measured apart.
    unpruned_baselines: bool = True
    fp16: bool = True  # an fp16 variant for TensorRT fp16 / GPU onnxruntime
    profile_frames: int = 6  # frames for onnxruntime's per-op-type profile of every ONNX variant (0: skip)
    golden_frames: int = DEFAULT_GOLDEN_FRAMES  # held-out frames recorded per variant for the device check (0: none)
    # Clip sets with known counts on which each shipped variant's counting settings are calibrated (none: the
    # bundle carries none, and the agent counts at the best-F2 threshold with its default min_hits).
    count_clips: list[ClipSet] = field(default_factory=list)


class _Steps:
    """`[n/total] message` progress lines; `finish()` says so if the count and the total ever drift apart."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def __call__(self, message: str) -> None:
        self.done += 1
        logger.info("[%d/%d] %s", self.done, self.total, message)

    def finish(self) -> None:
        if self.done != self.total:
            logger.warning("export chain took %d steps but announced %d", self.done, self.total)


# load, measure, unpruned ONNX + INT8, prune, fine-tune (or skip), export + parity, quantize, fp16, profile, time,
# counting calibration (or skip), bundle, report
CHAIN_STEPS = 13


def run_chain(opts: ChainOptions) -> dict[str, Any]:
    """Run the whole chain; writes ``out/bundle``, ``out/report.json``, ``out/report.md`` (and ``pruned.ckpt``)."""
    step = _Steps(CHAIN_STEPS)
    opts.out.mkdir(parents=True, exist_ok=True)
    key = load_private_key(opts.private_key)  # fail before hours of work, not after
    step("loading the model")
    source = _load(opts)
    width, height = opts.input_size or default_input_size(source.cfg.max_size)
    train_records, val_records, ood = _records(opts, source)
    eval_records = _subset(val_records, opts.eval_frames) if val_records else []
    # Thresholds are chosen on the out-of-distribution set when the model was selected on one (data.ood_root).
    ood_records = _subset(ood, opts.eval_frames) if ood else []
    if train_records:
        calibration = calibration_tensors(train_records, opts.calibration_frames, width, height)
    else:
        calibration = random_calibration_frames(width, height, count=min(opts.calibration_frames, 8))
    probe = _probe_tensors(val_records, calibration, opts.parity_frames, width, height)
    report: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "checkpoint": str(opts.checkpoint) if opts.checkpoint else "untrained (demo)",
        "checkpoint_sha256": source.sha256,
        "input_size": [width, height],
        "threads": opts.threads,
        "eval_frames": len(eval_records),
        "ood_eval_frames": len(ood_records),
        "threshold_selected_on": "in_and_out_of_distribution" if ood_records else "in_distribution",
        "calibration_frames": len(calibration),
        "calibration_method": opts.calibration_method,
        "prune": {k: v for k, v in vars(opts.prune).items()},
        "variants": {},
    }

    step("measuring the unpruned fp32 PyTorch model")
    baseline_model = copy.deepcopy(source.model)  # pruning works in place; the baseline is timed at the end
    base = torch_runner(baseline_model, width, height, opts.threads)
    report["variants"]["pytorch_fp32"] = _measure(
        "pytorch_fp32",
        base,
        model_stats(baseline_model, width, height).to_dict(),
        None,
        eval_records,
        width,
        height,
        ood_records,
    )

    scratch = tempfile.TemporaryDirectory(prefix="starfish-chain-")
    tmp = scratch.name
    onnx_paths: dict[str, Path] = {}
    runners: dict[str, Any] = {"pytorch_fp32": base}
    if opts.unpruned_baselines:
        step("exporting and quantizing the unpruned model (pruning's and INT8's own contributions)")
        base_stats = report["variants"]["pytorch_fp32"]
        stats = {"params": base_stats["params"], "macs": base_stats["macs"]}
        onnx_paths["onnx_fp32"] = export_onnx(baseline_model, Path(tmp) / "unpruned_fp32.onnx", width, height)
        onnx_paths["onnx_int8_cpu"] = quantize_int8(
            onnx_paths["onnx_fp32"],
            Path(tmp) / "unpruned_int8_cpu.onnx",
            calibration,
            method=opts.calibration_method,
            activations="asymmetric",
        )
        for name in ("onnx_fp32", "onnx_int8_cpu"):
            runners[name] = onnx_runner(onnx_paths[name], opts.threads)
            report["variants"][name] = _measure(
                name, runners[name], stats, onnx_paths[name], eval_records, width, height, ood_records
            )
    else:
        step("unpruned ONNX baselines skipped")

    if opts.pruned_checkpoint is not None:
        step(f"reusing the pruned, fine-tuned model {opts.pruned_checkpoint}")
        pruned_model, pruned_cfg, done = load_pruned_for(opts.pruned_checkpoint, source)
        report["prune"] = dict(done.get("prune", report["prune"]))
        if opts.prune.proposals is not None:  # an inference setting: applies to a reused model too
            pruned_cfg = with_test_proposals(pruned_model, pruned_cfg, opts.prune.proposals)
            report["prune"]["proposals"] = opts.prune.proposals
        if done.get("fine_tune"):
            report["fine_tune"] = done["fine_tune"]
        step("fine-tuning: done when that checkpoint was written")
        pruned_ckpt = opts.pruned_checkpoint
    else:
        step(f"pruning ({_settings(vars(opts.prune))})")
        pruned_model, pruned_cfg = prune_detector(source.model, source.cfg, opts.prune, width, height)
        done = {"prune": report["prune"]}
        if (opts.fine_tune_epochs > 0 or opts.fine_tune_steps) and opts.checkpoint is not None:
            budget = f"{opts.fine_tune_steps} steps" if opts.fine_tune_steps else f"{opts.fine_tune_epochs} epoch(s)"
            step(f"fine-tuning the pruned model for {budget}")
            pruned_model, fine_tune_metrics = _fine_tune(pruned_model, source, opts)
            report["fine_tune"] = done["fine_tune"] = _plain(fine_tune_metrics)
            from export.prune import set_test_proposals

            set_test_proposals(pruned_model, pruned_cfg.rpn_pre_nms_top_n_test, pruned_cfg.rpn_post_nms_top_n_test)
        else:
            step("fine-tuning skipped" + (" (untrained demo model)" if opts.checkpoint is None else ""))
        pruned_ckpt = save_pruned(
            pruned_model,
            pruned_cfg,
            {**source.info, "pruned_from": source.sha256, "pruning": done},
            opts.out / "pruned.ckpt",
        )
    report["pruned_checkpoint"] = str(pruned_ckpt)
    pruned_stats = model_stats(pruned_model, width, height).to_dict()

    with scratch:
        step("exporting the pruned fp32 ONNX and checking parity with PyTorch")
        fp32_path = export_onnx(pruned_model, Path(tmp) / "fp32.onnx", width, height)
        pruned_torch = torch_runner(pruned_model, width, height, opts.threads)
        fp32 = onnx_runner(fp32_path, opts.threads)
        parity = checks.check_parity(
            pruned_torch,
            fp32,
            probe,
            score_floor=pruned_cfg.box_score_thresh,
            max_detections=pruned_cfg.box_detections_per_img,
        )
        report["parity_fp32"] = parity.to_dict()
        if not parity.passed:
            raise ExportError(f"fp32 ONNX parity with PyTorch failed: {parity.problems[:3]}")
        report["variants"]["pruned_onnx_fp32"] = _measure(
            "pruned_onnx_fp32", fp32, pruned_stats, fp32_path, eval_records, width, height, ood_records
        )

        step(f"quantizing to INT8 (QDQ) with {len(calibration)} calibration frames")
        int8_path = quantize_int8(fp32_path, Path(tmp) / "int8.onnx", calibration, method=opts.calibration_method)
        int8 = onnx_runner(int8_path, opts.threads)
        agreement = checks.check_parity(
            fp32,
            int8,
            probe,
            min_iou=0.5,
            max_score_diff=0.1,
            score_floor=INT8_AGREEMENT_FLOOR,
            max_detections=pruned_cfg.box_detections_per_img,
        )
        report["int8_vs_fp32"] = {**agreement.to_dict(), "score_floor": INT8_AGREEMENT_FLOOR}
        report["variants"]["pruned_onnx_int8"] = _measure(
            "pruned_onnx_int8", int8, pruned_stats, int8_path, eval_records, width, height, ood_records
        )
        runners.update({"pruned_pytorch_fp32": pruned_torch, "pruned_onnx_fp32": fp32, "pruned_onnx_int8": int8})
        onnx_paths.update({"pruned_onnx_fp32": fp32_path, "pruned_onnx_int8": int8_path})
        int8_cpu_path = None
        if opts.cpu_int8:
            int8_cpu_path = quantize_int8(
                fp32_path,
                Path(tmp) / "int8_cpu.onnx",
                calibration,
                method=opts.calibration_method,
                activations="asymmetric",
            )
            runners["pruned_onnx_int8_cpu"] = onnx_runner(int8_cpu_path, opts.threads)
            report["variants"]["pruned_onnx_int8_cpu"] = _measure(
                "pruned_onnx_int8_cpu",
                runners["pruned_onnx_int8_cpu"],
                pruned_stats,
                int8_cpu_path,
                eval_records,
                width,
                height,
                ood_records,
            )

            onnx_paths["pruned_onnx_int8_cpu"] = int8_cpu_path

        fp16_path = None
        if opts.fp16:
            step("converting the pruned fp32 ONNX to the fp16 variant (for GPUs; onnxruntime's CPU emulates fp16)")
            fp16_path = convert_fp16(fp32_path, Path(tmp) / "fp16.onnx")
            runners["pruned_onnx_fp16"] = onnx_runner(fp16_path, opts.threads)
            onnx_paths["pruned_onnx_fp16"] = fp16_path
            report["variants"]["pruned_onnx_fp16"] = _measure(
                "pruned_onnx_fp16",
                runners["pruned_onnx_fp16"],
                pruned_stats,
                fp16_path,
                eval_records,
                width,
                height,
                ood_records,
            )
        else:
            step("fp16 variant skipped")

        if opts.profile_frames > 1:
            step(f"profiling every ONNX variant by op type ({opts.profile_frames} frames, {opts.threads} threads)")
            report["profile"] = _profile(onnx_paths, probe[: opts.profile_frames], opts.threads)
        else:
            step("op-type profiling skipped")

        step(f"timing every variant ({opts.latency_runs} interleaved runs, {opts.threads} threads)")
        report["load_average_before_timing"] = list(os.getloadavg())  # a shared machine: say how busy it was
        for name, latency in checks.measure_latencies(runners, probe, runs=opts.latency_runs).items():
            report["variants"].setdefault(
                name, {"params": pruned_stats["params"], "macs": pruned_stats["macs"], "file_bytes": None}
            )["latency"] = latency.to_dict()
            logger.info("%s: %.1f ms median", name, latency.median_ms)
        report["load_average_after_timing"] = list(os.getloadavg())

        variants_report = report["variants"]
        # Bundle variant -> (its model file, its runner and report entry).
        shipped = {"int8": (int8_path, "pruned_onnx_int8")}
        if int8_cpu_path is not None:
            shipped[CPU_INT8_VARIANT] = (int8_cpu_path, "pruned_onnx_int8_cpu")
        if opts.keep_fp32:
            shipped["fp32"] = (fp32_path, "pruned_onnx_fp32")
        if fp16_path is not None:
            shipped[FP16_VARIANT] = (fp16_path, "pruned_onnx_fp16")
        counting: dict[str, Counting] = {}
        if opts.count_clips:
            names = ", ".join(c.name for c in opts.count_clips)
            step(f"calibrating each variant's counting settings on {names} (the agent's tracker, replayed)")
            for variant, (_, name) in shipped.items():
                entry = variants_report[name]
                if "deployed_threshold" not in entry:  # measured without held-out data: nothing to start from
                    continue
                counting[variant], entry["counting"] = calibrate(
                    runners[name], opts.count_clips, width, height, entry["deployed_threshold"]
                )
        else:
            step("counting calibration skipped (no --count-clips)")
        step("writing the signed bundle")
        int8_threshold = variants_report["pruned_onnx_int8"].get("deployed_threshold")
        # Top level: the default (int8) variant's own threshold, also used by variants measured without one.
        threshold = _clamp(int8_threshold if int8_threshold is not None else source.score_threshold)
        variants = {
            variant: _variant_source(path, variants_report[name], counting.get(variant))
            for variant, (path, name) in shipped.items()
        }
        golden_png = encode_frames(
            frames_from_records(eval_records or val_records, opts.golden_frames)
            or random_frames(width, height, opts.golden_frames),
            width,
            height,
        )
        bundle_dir = opts.out / BUNDLE_DIR
        version, parent = _next_version(bundle_dir, opts.version)
        training = TrainingInfo(
            config_digest=source.config_digest or config_digest(source.cfg.to_dict()),
            data_fingerprint=source.data_fingerprint,
            checkpoint_sha256=source.sha256,
            backbone_weights=source.info.get("backbone_weights"),
        )
        manifest = write_bundle(
            bundle_dir,
            name=MODEL_NAME,
            version=version,
            parent_version=parent,
            classes=source.classes,
            input_spec=InputSpec.for_size(width, height),
            variants=variants,
            default_variant="int8",
            score_threshold=threshold,
            training=training,
            private_key=key,
            overwrite=True,
            golden=record_golden(golden_png, variants, threshold, width, height, threads=opts.threads)
            if golden_png
            else None,
        )
        if "onnx_fp32" in onnx_paths:
            # The unpruned model in the same form, so `starfish bench --reference` can time pruning's and INT8's
            # own contributions in one run. Another model name: it can never be mistaken for a release.
            reference = {
                "fp32": _variant_source(onnx_paths["onnx_fp32"], variants_report["onnx_fp32"]),
                CPU_INT8_VARIANT: _variant_source(onnx_paths["onnx_int8_cpu"], variants_report["onnx_int8_cpu"]),
            }
            reference_threshold = _clamp(variants_report["onnx_fp32"].get("deployed_threshold", threshold))
            write_bundle(
                opts.out / REFERENCE_DIR,
                name=f"{MODEL_NAME}-unpruned",
                version=version,
                parent_version=None,
                classes=source.classes,
                input_spec=InputSpec.for_size(width, height),
                variants=reference,
                default_variant="fp32",
                score_threshold=reference_threshold,
                training=training,
                private_key=key,
                overwrite=True,
                golden=record_golden(golden_png, reference, reference_threshold, width, height, threads=opts.threads)
                if golden_png
                else None,
            )
    load_bundle(bundle_dir, [key.public_key()])  # what we wrote must verify
    report["bundle"] = {
        "path": str(bundle_dir),
        "version": manifest.version,
        "score_threshold": threshold,
        "variant_thresholds": {v: manifest.threshold_for(v) for v in manifest.variants},
        "variant_counting": {
            v: c.model_dump(mode="json") for v in manifest.variants if (c := manifest.counting_for(v)) is not None
        },
        "size_bytes": sum(v.size for v in manifest.variants.values()),
        "golden_frames": len(manifest.golden.frames) if manifest.golden else 0,
        "golden_bytes": sum(f.size for f in manifest.golden.files()) if manifest.golden else 0,
    }
    report["goals"] = _goals(report)
    step("writing the report")
    (opts.out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (opts.out / "report.md").write_text(render_markdown(report))
    step.finish()
    return report


def _profile(paths: dict[str, Path], frames: list[np.ndarray], threads: int) -> dict[str, Any]:
    """Per ONNX variant: integer vs float convolutions in the graph onnxruntime runs, and ms per op type."""
    out: dict[str, Any] = {}
    for name, path in paths.items():
        kernels = conv_kernels(optimized_op_counts(path, threads))
        ops = op_time_profile(path, frames, threads)
        out[name] = {"kernels": kernels, "ms_per_op_type": ops, "ms_total": sum(ops.values())}
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(ops.items())[:4])
        logger.info("%s: %s; ms per frame by op type: %s", name, _settings(kernels), top)
    return out


def _load(opts: ChainOptions) -> SourceModel:
    if opts.checkpoint is not None:
        return load_source(opts.checkpoint)
    import torch

    from export.demo import DEMO_CONFIG
    from train.model import build_detector

    torch.manual_seed(0)
    model = build_detector(DEMO_CONFIG).eval()
    info = {"score_threshold": 0.5, "config_digest": config_digest(DEMO_CONFIG.to_dict())}
    return SourceModel(model, DEMO_CONFIG, info, None, None)


def _records(opts: ChainOptions, source: SourceModel) -> tuple[list, list, list]:
    """(training, in-distribution held-out, out-of-distribution) records of the checkpoint's own training run."""
    if opts.checkpoint is None:
        return [], [], []
    from train.config import config_from_dict
    from train.data import ood_records, split_records

    train_cfg = source.info.get("train_config")
    if not train_cfg:
        raise ExportError(f"{opts.checkpoint} records no training config: cannot find its held-out data")
    cfg = config_from_dict(train_cfg)
    if opts.data_root is not None:
        cfg.data.root = str(opts.data_root)
    cfg.data.val_limit = None  # evaluate on the whole held-out video; eval_frames caps it evenly
    cfg.data.train_limit = None
    if not cfg.data.root or not Path(cfg.data.root).is_dir():
        raise ExportError(f"training data {cfg.data.root!r} not found: pass --data DIR")
    if opts.ood_root is not None:
        cfg.data.ood_root = str(opts.ood_root)
    cfg.data.ood_limit = None
    if cfg.data.ood_root and not Path(cfg.data.ood_root).is_dir():
        raise ExportError(f"out-of-distribution data {cfg.data.ood_root!r} not found: pass --ood-data DIR")
    train, val = split_records(cfg)
    return train, val, ood_records(cfg)


def load_pruned_for(path: Path, source: SourceModel) -> tuple[Any, Any, dict[str, Any]]:
    """A pruned checkpoint written from ``source`` (its ``pruned_from`` is the source's sha256), with what was done
    to it (``prune`` settings, ``fine_tune`` summary); anything else is refused rather than mislabelled."""
    pruned = load_source(path)
    if pruned.info.get("architecture") != "pruned":
        raise ExportError(f"{path} is not a pruned checkpoint (write one with `starfish export prune`)")
    if pruned.info.get("pruned_from") != source.sha256:
        raise ExportError(
            f"{path} was pruned from a checkpoint with sha256 {str(pruned.info.get('pruned_from'))[:12]}..., "
            f"not from this one ({str(source.sha256)[:12]}...)"
        )
    return pruned.model, pruned.cfg, dict(pruned.info.get("pruning") or {})


def _plain(value: Any) -> Any:
    """Nested dicts/lists of plain numbers and strings (checkpoints load with weights_only=True)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _subset(records: list, limit: int | None) -> list:
    if limit is None or len(records) <= limit:
        return list(records)
    picks = np.unique(np.linspace(0, len(records) - 1, num=limit).round().astype(int))
    return [records[i] for i in picks]


def _probe_tensors(records: list, calibration: list, count: int, width: int, height: int) -> list[np.ndarray]:
    """``count`` frames for parity and latency — held-out frames first, topped up with calibration (training)
    frames when the held-out video is shorter, random frames for the untrained demo — plus one all-zero frame:
    zero detections must work too."""
    from edge_agent.dataset import load_image
    from edge_agent.preprocess import letterbox

    tensors = [letterbox(load_image(r.image_path), width, height)[0] for r in _subset(records, count)]
    tensors += list(calibration[: max(0, count - len(tensors))])
    rng = np.random.default_rng(1)
    while len(tensors) < count:
        tensors.append(rng.random((1, 3, height, width), dtype=np.float32))
    tensors.append(np.zeros((1, 3, height, width), np.float32))
    return tensors


def _fine_tune(model, source: SourceModel, opts: ChainOptions):  # type: ignore[no-untyped-def]
    from train.api import fine_tune
    from train.config import ConfigError, with_dotted

    try:
        cfg = with_dotted(source.info["train_config"], opts.fine_tune_overrides)
    except ConfigError as exc:
        raise ExportError(f"fine-tuning settings: {exc}") from exc
    if opts.data_root is not None:
        cfg.data.root = str(opts.data_root)
    cfg.checkpoint.output_dir = str(opts.out / "runs")
    cfg.checkpoint.name = "prune-fine-tune"
    cfg.checkpoint.early_copy = cfg.checkpoint.best_copy = cfg.checkpoint.resume = None
    cfg.logger.wandb = False
    model.train()
    tuned, metrics = fine_tune(
        model, cfg, opts.fine_tune_epochs, max_steps=opts.fine_tune_steps, keep_best=opts.fine_tune_select
    )
    return tuned.eval(), metrics


def _measure(name, runner, stats, path, eval_records, width, height, ood_records=()):  # type: ignore[no-untyped-def]
    entry: dict[str, Any] = {
        "params": stats["params"],
        "macs": stats["macs"],
        "file_bytes": Path(path).stat().st_size if path else None,
    }
    if eval_records:
        predictions, truths = checks.predict(runner, eval_records, width, height)
        entry["accuracy"] = checks.accuracy(predictions, truths).to_dict()
        entry["deployed_threshold"] = entry["accuracy"]["best_threshold"]
        logger.info(
            "%s: F2 %.3f (thr %.2f), mAP@0.5 %.3f",
            name,
            entry["accuracy"]["best_f2"],
            entry["accuracy"]["best_threshold"],
            entry["accuracy"]["map50"],
        )
        if ood_records:
            # The deployed threshold is the one that maximises F2 out of distribution; both sets are scored at it.
            ood_predictions, ood_truths = checks.predict(runner, list(ood_records), width, height)
            ood = checks.accuracy(ood_predictions, ood_truths).to_dict()
            entry["accuracy_ood"] = ood
            # Deployed: the threshold with the best mean of in- and out-of-distribution F2. The out-of-distribution
            # optimum alone sits low for a model that generalizes poorly (many weak boxes), and every false box
            # there becomes a false track in the agent's unique count.
            threshold = joint_threshold(predictions, truths, ood_predictions, ood_truths)
            entry["deployed_threshold"] = threshold
            entry["f2_in_distribution_at_deployed"] = checks.accuracy(predictions, truths, score_threshold=threshold).f2
            entry["f2_ood_at_deployed"] = checks.accuracy(ood_predictions, ood_truths, score_threshold=threshold).f2
            logger.info(
                "%s: out-of-distribution F2 %.3f (thr %.2f), mAP@0.5 %.3f; in-distribution F2 %.3f there",
                name,
                ood["best_f2"],
                ood["best_threshold"],
                ood["map50"],
                entry["f2_in_distribution_at_deployed"],
            )
    return entry


THRESHOLD_GRID = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))  # 0.05 .. 0.95


def joint_threshold(predictions: list, truths: list, ood_predictions: list, ood_truths: list) -> float:
    """The score threshold maximising the mean of the two F2 curves (ties: the higher threshold)."""
    from edge_agent.metrics import f2_curve

    ours = f2_curve(predictions, truths, THRESHOLD_GRID)
    theirs = f2_curve(ood_predictions, ood_truths, THRESHOLD_GRID)
    best = max(range(len(THRESHOLD_GRID)), key=lambda i: (ours[i] + theirs[i], THRESHOLD_GRID[i]))
    return THRESHOLD_GRID[best]


def _variant_source(path: Path, entry: dict[str, Any], counting: Counting | None = None) -> VariantSource:
    """A bundle variant with its own best-F2 threshold (INT8 scores are not the fp32 model's, so one threshold
    for every variant would run all but one of them off their best F2) and its own counting settings."""
    acc = entry.get("accuracy")
    return VariantSource(
        path,
        f2=acc["best_f2"] if acc else None,
        map50=acc["map50"] if acc else None,
        latency_ms=entry["latency"]["median_ms"],
        score_threshold=_clamp(entry["deployed_threshold"]) if acc else None,
        counting=counting,
    )


def _clamp(threshold: float) -> float:
    return float(min(1.0, max(0.0, threshold)))


def _next_version(bundle_dir: Path, requested: int | None) -> tuple[int, int | None]:
    previous = None
    if (bundle_dir / MANIFEST_NAME).is_file():
        try:
            previous = parse_manifest((bundle_dir / MANIFEST_NAME).read_bytes()).version
        except ValueError:
            previous = None
    version = requested if requested is not None else (previous or 0) + 1
    parent = previous if previous is not None and previous < version else None
    return version, parent


LATENCY_RATIO_GOAL = 3.0  # unpruned PyTorch fp32 median / pruned INT8 median, same machine and threads
F2_DROP_GOAL = 0.02  # absolute best-threshold F2 points the pruned INT8 model may lose


def _goals(report: dict[str, Any]) -> dict[str, Any]:
    """The export goals, judged on the INT8 model onnxruntime runs on a CPU (`int8_cpu` when built), with the
    TensorRT-ready `int8` model's latency ratio beside it."""
    variants = report["variants"]
    base, tensorrt_int8 = variants["pytorch_fp32"], variants["pruned_onnx_int8"]
    int8 = variants.get("pruned_onnx_int8_cpu", tensorrt_int8)
    ratio = base["latency"]["median_ms"] / int8["latency"]["median_ms"]
    goals: dict[str, Any] = {
        "judged_variant": CPU_INT8_VARIANT if "pruned_onnx_int8_cpu" in variants else "int8",
        "latency_ratio": ratio,
        "latency_goal_met": ratio >= LATENCY_RATIO_GOAL,
        "latency_ratio_tensorrt_int8": base["latency"]["median_ms"] / tensorrt_int8["latency"]["median_ms"],
    }
    goals.update(_compression_goals(report))
    if "accuracy" in base and "accuracy" in int8:
        # Each variant at its own best-F2 threshold (what the bundle deploys), and at the baseline's threshold.
        base_f2, int8_f2 = base["accuracy"]["best_f2"], int8["accuracy"]["best_f2"]
        drop = base_f2 - int8_f2
        goals.update(
            {
                "f2_base": base_f2,
                "f2_judged": int8_f2,
                "f2_drop": drop,
                "f2_drop_relative": drop / base_f2 if base_f2 else None,
                "f2_goal_met": drop <= F2_DROP_GOAL,
            }
        )
    return goals


# The compression goals: each step must carry its own weight (same frames, threads and run for every figure).
MAC_REDUCTION_GOAL = 0.35  # fewer MACs, pruned vs unpruned, whole detector
PRUNED_F2_TOLERANCE = 0.01  # best-threshold F2, pruned fp32 vs unpruned fp32
INT8_SPEEDUP_GOAL = 1.5  # pruned fp32 ONNX / pruned INT8 ONNX
INT8_F2_TOLERANCE = 0.01  # best-threshold F2, pruned INT8 vs pruned fp32
TOGETHER_VS_ONNX_GOAL = 2.5  # unpruned fp32 ONNX / pruned INT8 ONNX
TOGETHER_VS_EAGER_GOAL = 6.0  # unpruned eager PyTorch / pruned INT8 ONNX
BUNDLE_BYTES_GOAL = 30e6


def _compression_goals(report: dict[str, Any]) -> dict[str, Any]:
    """Each step's own contribution (pruning alone, INT8 alone, both, the runtime alone) and the goals on them.

    Figures are left out, never guessed, when the rows they need were not measured."""
    v = report["variants"]
    int8_name = "pruned_onnx_int8_cpu" if "pruned_onnx_int8_cpu" in v else "pruned_onnx_int8"
    unpruned_int8 = "onnx_int8_cpu"

    def ms(name: str) -> float | None:
        lat = v.get(name, {}).get("latency")
        return lat["median_ms"] if lat else None

    def f2(name: str) -> float | None:
        acc = v.get(name, {}).get("accuracy")
        return acc["best_f2"] if acc else None

    def ratio(slow: str, fast: str) -> float | None:
        a, b = ms(slow), ms(fast)
        return a / b if a and b else None

    out: dict[str, Any] = {}
    if "pytorch_fp32" in v and "pruned_onnx_fp32" in v:
        reduction = 1.0 - v["pruned_onnx_fp32"]["macs"] / v["pytorch_fp32"]["macs"]
        out["mac_reduction"] = reduction
        out["mac_reduction_goal_met"] = reduction >= MAC_REDUCTION_GOAL
    speedups = {
        "runtime_alone": ratio("pytorch_fp32", "onnx_fp32"),
        "pruning_alone": ratio("onnx_fp32", "pruned_onnx_fp32"),
        "int8_alone": ratio("onnx_fp32", unpruned_int8),
        "int8_on_pruned": ratio("pruned_onnx_fp32", int8_name),
        "both_vs_onnx": ratio("onnx_fp32", int8_name),
        "both_vs_eager": ratio("pytorch_fp32", int8_name),
    }
    out["speedups"] = {k: x for k, x in speedups.items() if x is not None}
    for key, goal in (
        ("int8_on_pruned", INT8_SPEEDUP_GOAL),
        ("both_vs_onnx", TOGETHER_VS_ONNX_GOAL),
        ("both_vs_eager", TOGETHER_VS_EAGER_GOAL),
    ):
        if speedups[key] is not None:
            out[f"{key}_goal_met"] = speedups[key] >= goal
    reference = f2("onnx_fp32") if f2("onnx_fp32") is not None else f2("pytorch_fp32")
    if reference is not None and f2("pruned_onnx_fp32") is not None:
        out["pruned_f2_drop"] = reference - f2("pruned_onnx_fp32")
        out["pruned_f2_goal_met"] = out["pruned_f2_drop"] <= PRUNED_F2_TOLERANCE
    if f2("pruned_onnx_fp32") is not None and f2(int8_name) is not None:
        out["int8_f2_drop"] = f2("pruned_onnx_fp32") - f2(int8_name)
        out["int8_f2_goal_met"] = out["int8_f2_drop"] <= INT8_F2_TOLERANCE
    if "bundle" in report:
        out["bundle_size_goal_met"] = report["bundle"]["size_bytes"] <= BUNDLE_BYTES_GOAL
    return out


def _contribution_lines(report: dict[str, Any]) -> list[str]:
    """The table that keeps every figure to its own step: each ratio is two medians of the same timing run."""
    goals = report.get("goals", {})
    speedups = goals.get("speedups", {})
    if not speedups:
        return []
    v = report["variants"]
    int8_name = "pruned_onnx_int8_cpu" if "pruned_onnx_int8_cpu" in v else "pruned_onnx_int8"
    rows = [
        ("runtime alone (onnxruntime vs eager PyTorch, unpruned fp32)", "runtime_alone", "pytorch_fp32", "onnx_fp32"),
        ("pruning alone (fp32 ONNX, unpruned -> pruned)", "pruning_alone", "onnx_fp32", "pruned_onnx_fp32"),
        ("INT8 alone (unpruned, fp32 ONNX -> int8_cpu)", "int8_alone", "onnx_fp32", "onnx_int8_cpu"),
        ("INT8 on the pruned model (pruned fp32 ONNX -> pruned INT8)", "int8_on_pruned", "pruned_onnx_fp32", int8_name),
        ("both (unpruned fp32 ONNX -> pruned INT8)", "both_vs_onnx", "onnx_fp32", int8_name),
        ("both + runtime (unpruned eager -> pruned INT8)", "both_vs_eager", "pytorch_fp32", int8_name),
    ]
    goal_of = {
        "int8_on_pruned": INT8_SPEEDUP_GOAL,
        "both_vs_onnx": TOGETHER_VS_ONNX_GOAL,
        "both_vs_eager": TOGETHER_VS_EAGER_GOAL,
    }
    lines = [
        "",
        "Each step's own contribution (medians of the same interleaved timing run, same frames and threads):",
        "",
        "| step | from | to | speed-up | goal |",
        "|---|---|---|---:|---|",
    ]
    for label, key, slow, fast in rows:
        if key not in speedups:
            continue
        goal = goal_of.get(key)
        verdict = f">= {goal:g}x: {_met(speedups[key] >= goal)}" if goal else "-"
        lines.append(
            f"| {label} | {slow} {v[slow]['latency']['median_ms']:.1f} ms | {fast} "
            f"{v[fast]['latency']['median_ms']:.1f} ms | {speedups[key]:.2f}x | {verdict} |"
        )
    if "mac_reduction" in goals:
        lines.append(
            f"- MACs: {v['pytorch_fp32']['macs'] / 1e9:.3f} -> {v['pruned_onnx_fp32']['macs'] / 1e9:.3f} G, "
            f"{goals['mac_reduction'] * 100:.1f}% fewer (goal >= {MAC_REDUCTION_GOAL * 100:g}%: "
            f"{_met(goals['mac_reduction_goal_met'])})"
        )
    if "pruned_f2_drop" in goals:
        lines.append(
            f"- best-threshold F2, unpruned -> pruned fp32: drop {goals['pruned_f2_drop']:.4f} "
            f"(goal <= {PRUNED_F2_TOLERANCE:g}: {_met(goals['pruned_f2_goal_met'])})"
        )
    if "int8_f2_drop" in goals:
        lines.append(
            f"- best-threshold F2, pruned fp32 -> pruned INT8 ({int8_name}): drop {goals['int8_f2_drop']:.4f} "
            f"(goal <= {INT8_F2_TOLERANCE:g}: {_met(goals['int8_f2_goal_met'])})"
        )
    if "bundle_size_goal_met" in goals:
        lines.append(
            f"- bundle {report['bundle']['size_bytes'] / 1e6:.1f} MB of model files (goal <= "
            f"{BUNDLE_BYTES_GOAL / 1e6:g} MB: {_met(goals['bundle_size_goal_met'])})"
        )
    return lines


def _profile_lines(report: dict[str, Any]) -> list[str]:
    """Where the time goes, per ONNX variant: integer vs float convolutions, and the heaviest op types."""
    profile = report.get("profile")
    if not profile:
        return []
    lines = [
        "",
        "Where the time goes (onnxruntime's profiler, kernel ms per frame by op type; convolutions counted in the "
        "graph onnxruntime optimised and runs):",
        "",
        "| variant | integer convs | float convs | kernel ms | heaviest op types (ms) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, entry in profile.items():
        k = entry["kernels"]
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(entry["ms_per_op_type"].items())[:5])
        lines.append(f"| {name} | {k['integer_conv']} | {k['float_conv']} | {entry['ms_total']:.1f} | {top} |")
    return lines


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: one row per variant, then parity, goals and provenance."""
    width, height = report["input_size"]
    lines = [
        "# Export report",
        "",
        f"- checkpoint: `{report['checkpoint']}` (sha256 `{report['checkpoint_sha256']}`)",
        f"- created: {report['created_at']}; input {width}x{height}; CPU, {report['threads']} threads; "
        f"{report['eval_frames']} held-out frames; {report['calibration_frames']} calibration frames",
        f"- load average (1/5/15 min) before timing {_loadavg(report.get('load_average_before_timing'))}, after "
        f"{_loadavg(report.get('load_average_after_timing'))} (2-core machine shared with training and other jobs)",
        f"- pruning: {_settings(report['prune'])}",
        "",
        "| variant | params | GMACs | file MB | median ms | p90 ms | F2 (best thr) | thr | mAP@0.5 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in report["variants"].items():
        if "latency" not in v:
            continue
        acc = v.get("accuracy") or {}
        size = f"{v['file_bytes'] / 1e6:.1f}" if v.get("file_bytes") else "-"
        lines.append(
            f"| {name} | {v['params'] / 1e6:.2f}M | {v['macs'] / 1e9:.3f} | {size} | {v['latency']['median_ms']:.1f}"
            f" | {v['latency']['p90_ms']:.1f} | {_f(acc.get('best_f2'))} | {_f(acc.get('best_threshold'), 2)}"
            f" | {_f(acc.get('map50'))} |"
        )
    p, q = report["parity_fp32"], report["int8_vs_fp32"]
    goals = report["goals"]
    judged = goals.get("judged_variant", "int8")
    lines += [
        "",
        f"- fp32 ONNX vs PyTorch parity on {p['frames']} frames: {p['matched']}/{p['reference_detections']} matched,"
        f" min IoU {p['min_iou']:.4f}, max |Δscore| {p['max_score_diff']:.1e} -> {_verdict(p)}",
        _int8_agreement_line(q),
        _latency_line(report, goals, judged),
    ]
    if "latency_ratio_tensorrt_int8" in goals and judged != "int8":
        lines.append(
            f"- the same ratio for the TensorRT-ready `int8` variant (zero-point-0 activations, which "
            f"onnxruntime's CPU kernels run in float): {goals['latency_ratio_tensorrt_int8']:.2f}x"
        )
    if "f2_drop" in goals:
        lines.append(_f2_line(goals, judged))
    if "fine_tune" in report:
        lines.append(f"- fine-tune validation: {_settings(report['fine_tune'])}")
    lines += _contribution_lines(report)
    lines += _profile_lines(report)
    lines += _ood_lines(report)
    lines += _counting_lines(report)
    b = report["bundle"]
    lines += [
        "",
        f"Bundle `{b['path']}` v{b['version']}, score threshold {b['score_threshold']:.3f}, "
        f"{b['size_bytes'] / 1e6:.1f} MB of model files.",
        "",
    ]
    return "\n".join(lines)


def _int8_agreement_line(agreement: dict[str, Any]) -> str:
    floor = agreement.get("score_floor")
    prefix = f"- INT8 vs fp32 ONNX (fp32 score > {floor:.2f})" if floor is not None else "- INT8 vs fp32 ONNX"
    if agreement["reference_detections"] == 0:
        return f"{prefix}: no fp32 detection above the floor on {agreement['frames']} frames, nothing compared"
    return (
        f"{prefix}: {agreement['matched']}/{agreement['reference_detections']} matched, min IoU "
        f"{agreement['min_iou']:.3f}, max |Δscore| {agreement['max_score_diff']:.3f}"
    )


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _latency_line(report: dict[str, Any], goals: dict[str, Any], judged: str) -> str:
    variants = report["variants"]
    base = variants["pytorch_fp32"]["latency"]["median_ms"]
    name = (
        "pruned_onnx_int8_cpu"
        if judged == CPU_INT8_VARIANT and "pruned_onnx_int8_cpu" in variants
        else "pruned_onnx_int8"
    )
    int8 = variants[name]["latency"]["median_ms"]
    ratio = base / int8  # recomputed from the numbers shown, so the verdict cannot disagree with them
    return (
        f"- latency: unpruned PyTorch fp32 {base:.1f} ms / pruned INT8 ONNX ({judged}) {int8:.1f} ms = "
        f"**{ratio:.2f}x** (goal >= {LATENCY_RATIO_GOAL:g}x: {_met(ratio >= LATENCY_RATIO_GOAL)})"
    )


def _f2_line(goals: dict[str, Any], judged: str) -> str:
    drop = goals["f2_drop"]
    base, new = goals.get("f2_base"), goals.get("f2_judged")
    change = f"{base:.4f} -> {new:.4f}, " if base is not None and new is not None else ""
    relative = goals.get("f2_drop_relative")
    rel = f", {relative * 100:.2f}% relative" if relative is not None else ""
    direction = "drop" if drop >= 0 else "rise (negative drop)"
    return (
        f"- best-threshold F2, unpruned PyTorch -> pruned INT8 ({judged}): {change}{direction} "
        f"**{abs(drop):.4f}** absolute{rel} (goal: drop <= {F2_DROP_GOAL:g} absolute: "
        f"{_met(drop <= F2_DROP_GOAL)})"
    )


def _settings(values: Any) -> str:
    """`key value, key value` for a settings mapping (no Python reprs in the report)."""
    if isinstance(values, dict):
        return ", ".join(f"{k} {_settings(v)}" for k, v in values.items()) or "-"
    if isinstance(values, (list, tuple)):
        return "[" + ", ".join(_settings(v) for v in values) + "]"
    if values is None:
        return "-"
    if isinstance(values, float):
        return f"{values:.4g}"
    return str(values)


def _verdict(parity: dict[str, Any]) -> str:
    if parity["reference_detections"] == 0:
        return "NOT TESTED (no detections above the cut-offs: an untrained model scores every box alike)"
    return "PASS" if parity["passed"] else "FAIL"


def _loadavg(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "-"


def _ood_lines(report: dict[str, Any]) -> list[str]:
    """In- and out-of-distribution F2 side by side, at each variant's deployed threshold and at its own best."""
    rows = [(name, v) for name, v in report["variants"].items() if "accuracy_ood" in v]
    if not rows:
        return []
    lines = [
        "",
        f"Out-of-distribution renderer ({report.get('ood_eval_frames', 0)} frames, never trained on; it selected "
        f"the checkpoint and the thresholds) next to the in-distribution held-out frames "
        f"({report.get('eval_frames', 0)}); each variant's deployed threshold maximises the mean of its two F2s:",
        "",
        "| variant | deployed thr | F2 OOD at deployed | F2 in-dist. at deployed | F2 OOD (own best) | mAP@0.5 OOD "
        "| F2 in-dist. (own best) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in rows:
        ood, acc = v["accuracy_ood"], v["accuracy"]
        lines.append(
            f"| {name} | {_f(v['deployed_threshold'], 3)} | {_f(v.get('f2_ood_at_deployed'))} "
            f"| {_f(v['f2_in_distribution_at_deployed'])} | {_f(ood['best_f2'])} | {_f(ood['map50'])} "
            f"| {_f(acc['best_f2'])} |"
        )
    return lines


def _counting_lines(report: dict[str, Any]) -> list[str]:
    """Each variant's calibrated counting setting beside the uncalibrated one, per selection clip set."""
    rows = [(name, v["counting"]) for name, v in report["variants"].items() if "counting" in v]
    if not rows:
        return []
    sets = rows[0][1]["selected_on"]
    described = ", ".join(f"`{s['name']}` ({s['clips']} clips, {s['true']} starfish)" for s in sets)
    lines = [
        "",
        f"Counting settings, calibrated on {described}: the agent's tracker replayed over each variant's "
        "detections; the setting with the lowest mean per-clip count error (averaged over the sets) is shipped. "
        "Uncalibrated: the deployed threshold with the default min_hits. Counted / true, mean per-clip error:",
        "",
        "| variant | setting | " + " | ".join(f"`{s['name']}`" for s in sets) + " |",
        "|---|---|" + "---:|" * len(sets),
    ]

    def cells(row: dict[str, Any]) -> str:
        parts = []
        for s in sets:
            e = row["sets"][s["name"]]
            parts.append(f"{e['counted']} / {e['true']}, {100 * e['mean_clip_error']:.0f} %")
        return " | ".join(parts)

    for name, c in rows:
        for label in ("chosen", "uncalibrated"):
            row = c[label]
            lines.append(
                f"| {name} | {label}: {row['score_threshold']:.2f}, min_hits {row['min_hits']} | {cells(row)} |"
            )
    return lines


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def copy_public_key(private_key: Path, dest: Path) -> None:
    from edge_agent.bundle.signing import public_key_pem

    dest.write_bytes(public_key_pem(load_private_key(private_key).public_key()))
