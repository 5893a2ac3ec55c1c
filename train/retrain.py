"""`starfish retrain`: fine-tune the released model on new data, export it, gate it against the released one, release.

The job, in order (each step's output under ``out``):

1. **What is released now**: the newest ``<name>-<version>.tar`` in the bundle store (or ``released``), verified
   (from an ``s3://`` store it is downloaded into ``out/released/`` first);
   the checkpoint it was built from is looked up by the sha256 its manifest records (``training.checkpoint_sha256``)
   in the checkpoint registry, a directory of ``<sha256>.ckpt`` files this job keeps (or given as ``checkpoint``,
   then checked against that sha256: fine-tuning must start from what devices run).
2. **Fine-tune** (`train.api.fit` with ``checkpoint.init_weights``) on one or more dataset roots in the Kaggle
   layout: the first is split (its held-out video is the gate's test set), the others train on every frame. The
   training config is the released checkpoint's own, with the new data, ``epochs`` and any ``--section.key=value``
   overrides (``--trainer.devices 4 --trainer.strategy ddp`` for Lightning DDP). Under DDP every rank runs this
   function; only rank 0 goes past training.
3. **Export**: `export.chain.run_chain` makes the candidate bundle, version = one above anything in the store.
4. **Release gate**: the candidate and the released bundle are scored *in this run*, on the same held-out frames,
   with the same onnxruntime CPU settings, their latencies measured interleaved call by call (load from other
   processes hits both alike). Both run the same variant (default ``int8_cpu``, what a CPU device runs) at their
   own deployed score threshold, i.e. as a device would count with them. Refused when F2 drops by more than
   ``f2_tolerance`` or the median latency grows by more than ``latency_budget`` (a fraction).
5. **Report** ``report.json`` + ``report.md``; when the gate passes, the checkpoint joins the registry and the
   bundle is released (`export.release.make_release`: store, signed announcement, optionally published).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.bundle import BundleError, VerifiedBundle, load_bundle, load_private_key
from edge_agent.bundle.files import sha256_file
from edge_agent.bundle.manifest import CPU_INT8_VARIANT
from export.s3_store import S3Store

if TYPE_CHECKING:
    from edge_agent.bundle import Manifest
    from export.counting import ClipSet

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CANDIDATE_DIR = "candidate"
_TAR = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*)-(?P<version>\d+)\.tar$")


class RetrainError(ValueError):
    """Input the job cannot start from (no released model, a checkpoint that is not the released one, ...)."""


@dataclass
class GateConfig:
    f2_tolerance: float = 0.02  # absolute F2 points the candidate may lose against the released model
    latency_budget: float = 0.10  # fraction by which the candidate's median latency may exceed the released one's
    variant: str | None = None  # None: int8_cpu when both bundles have it, else the released bundle's default
    eval_frames: int | None = None  # cap on held-out frames (evenly spread; None: all)
    latency_runs: int = 20
    threads: int = 2

    def __post_init__(self) -> None:
        if self.f2_tolerance < 0 or self.latency_budget < 0:
            raise RetrainError("the F2 tolerance and the latency budget must be >= 0")
        if self.latency_runs < 1:
            raise RetrainError("latency_runs must be >= 1")


@dataclass
class RetrainOptions:
    data: list[Path]
    out: Path
    key: Path  # private key that signs bundles (and, unless release_key is given, announcements)
    store: Path | S3Store
    checkpoints: Path  # registry of released checkpoints, <sha256>.ckpt
    url_base: str | None = None  # where the store is served; to release, this or (s3 store) presign_s
    presign_s: int | None = None  # s3 store: announce a presigned GET URL valid this long instead
    release_key: Path | None = None
    bundle_keys: list[Path] = field(default_factory=list)  # public keys the released bundle verifies with
    released: Path | None = None
    checkpoint: Path | None = None
    epochs: int = 1
    overrides: list[str] = field(default_factory=list)
    gate: GateConfig = field(default_factory=GateConfig)
    prune_ratio: float = 0.0
    head_ratio: float | None = None
    prune_epochs: int = 0
    calibration_frames: int = 100
    parity_frames: int = 20
    # Clip sets (videos + synth.json) on which the candidate's counting settings are calibrated (export.counting).
    count_clips: list[Path] = field(default_factory=list)
    allow_uncalibrated_count: bool = False  # release a candidate without them although the released one has them
    release: bool = True
    train_only: bool = False
    expires_in: timedelta = timedelta(days=7)
    broker: tuple[str, int] | None = None
    fleet: str = "default"
    prefix: str = "starfish"


# -- 1. what is released now ---------------------------------------------------------------------------------------


def store_versions(store: Path | S3Store) -> dict[str, dict[int, str]]:
    """``{name: {version: tar}}`` of the bundle tars in ``store`` (release.store_bundle's naming): paths in a
    directory, object keys in an s3 store."""
    if isinstance(store, S3Store):
        names = store.tar_names()
    else:
        names = {p.name: str(p) for p in store.iterdir() if p.is_file()} if store.is_dir() else {}
    found: dict[str, dict[int, str]] = {}
    for file_name, where in names.items():
        match = _TAR.match(file_name)
        if match:
            found.setdefault(match["name"], {})[int(match["version"])] = where
    return found


def resolve_released(
    store: Path | S3Store,
    released: Path | None,
    keys: list[Any],
    work: Path | None = None,
) -> VerifiedBundle:
    """The released bundle, verified: ``released`` when given, else the store's newest tar (an s3 store's is
    downloaded into ``work``)."""
    if released is None:
        versions = store_versions(store)
        if not versions:
            raise RetrainError(
                f"no released bundle in {store} (no <name>-<version>.tar): release one with `starfish release` "
                "or pass --released"
            )
        if len(versions) > 1:
            raise RetrainError(f"{store} holds several models ({', '.join(sorted(versions))}): pass --released")
        (by_version,) = versions.values()
        newest = by_version[max(by_version)]
        if isinstance(store, S3Store):
            if work is None:
                raise ValueError("resolve_released needs a work directory for an s3 store")
            released = store.fetch(newest, work / Path(newest).name)
        else:
            released = Path(newest)
    try:
        return load_bundle(released, keys)
    except BundleError as exc:
        raise RetrainError(f"the released bundle {released} does not verify: {exc}") from exc


def resolve_checkpoint(released: VerifiedBundle, registry: Path, checkpoint: Path | None) -> Path:
    """The checkpoint ``released`` was exported from: given (and checked) or found in the registry."""
    wanted = released.manifest.training.checkpoint_sha256
    label = f"{released.manifest.name} v{released.manifest.version}"
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise RetrainError(f"checkpoint not found: {checkpoint}")
        actual = sha256_file(checkpoint)
        if wanted and actual != wanted:
            raise RetrainError(
                f"{checkpoint} (sha256 {actual[:12]}…) is not the checkpoint {label} was exported from "
                f"({wanted[:12]}…): fine-tuning must start from the released model"
            )
        return checkpoint
    if not wanted:
        raise RetrainError(f"{label} records no checkpoint sha256: pass --checkpoint")
    path = registry / f"{wanted}.ckpt"
    if not path.is_file():
        raise RetrainError(f"the checkpoint of {label} ({wanted[:12]}…) is not in {registry}: pass --checkpoint")
    if sha256_file(path) != wanted:
        raise RetrainError(f"{path} does not hash to its name: the registry is damaged")
    return path


def register_checkpoint(checkpoint: Path, registry: Path) -> Path:
    """Copy ``checkpoint`` into the registry under its sha256 (atomically), so the next job can start from it."""
    registry.mkdir(parents=True, exist_ok=True)
    dest = registry / f"{sha256_file(checkpoint)}.ckpt"
    if dest.is_file():
        return dest
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=registry)
    try:
        with os.fdopen(fd, "wb") as handle, open(checkpoint, "rb") as src:
            shutil.copyfileobj(src, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# -- 2. fine-tune ----------------------------------------------------------------------------------------------------


def retrain_config(checkpoint: Path, data: list[Path], out: Path, epochs: int, overrides: list[str]) -> Any:
    """The released checkpoint's training config with the new data, epochs and ``overrides`` applied."""
    import yaml

    from train.checkpoint import CheckpointError, read_checkpoint
    from train.config import ConfigError, load_config

    if not data:
        raise RetrainError("no dataset root given (--data DIR)")
    for root in data:
        if not (root / "train.csv").is_file():
            raise RetrainError(f"dataset root {root} holds no train.csv")
    try:
        info = dict(read_checkpoint(checkpoint)["starfish"])
    except (CheckpointError, KeyError, TypeError) as exc:
        raise RetrainError(f"{checkpoint} is not a starfish-edge training checkpoint: {exc}") from exc
    base = info.get("train_config")
    if not isinstance(base, dict):
        raise RetrainError(f"{checkpoint} records no training config to fine-tune with")
    out.mkdir(parents=True, exist_ok=True)
    base_file = out / "released-config.yaml"
    base_file.write_text(yaml.safe_dump(base, sort_keys=False))
    forced = [
        f"--data.root={data[0]}",
        f"--data.extra_roots={json.dumps([str(p) for p in data[1:]])}",
        f"--trainer.max_epochs={epochs}",
        "--trainer.max_steps=-1",
        f"--checkpoint.output_dir={out / 'runs'}",
        "--checkpoint.name=retrain",
        f"--checkpoint.init_weights={checkpoint}",
        f"--checkpoint.best_copy={out / 'candidate.ckpt'}",
        "--checkpoint.early_copy=null",
        "--checkpoint.resume=null",
    ]
    try:
        return load_config(config_files=[base_file], overrides=[*forced, *overrides])
    except ConfigError as exc:
        raise RetrainError(str(exc)) from exc


def train_candidate(cfg: Any) -> tuple[Path | None, dict[str, float]]:
    """Fine-tune (`train.api.fit`); returns (candidate checkpoint, metrics) on rank 0, (None, metrics) elsewhere.

    Under Lightning DDP the other ranks are this same command started again by Lightning; they must stop after
    training, or every rank would export and release."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from train.api import fit

    metrics = fit(cfg)
    if getattr(rank_zero_only, "rank", 0) != 0:
        return None, metrics
    return Path(cfg.checkpoint.best_copy), metrics


# -- 4. release gate -------------------------------------------------------------------------------------------------


def gate_variant(candidate: VerifiedBundle, released: VerifiedBundle, wanted: str | None) -> str:
    if wanted is None:
        both = set(candidate.manifest.variants) & set(released.manifest.variants)
        wanted = CPU_INT8_VARIANT if CPU_INT8_VARIANT in both else released.manifest.default_variant
    for bundle in (candidate, released):
        bundle.variant_name(wanted)  # BundleError names what the bundle has
    return wanted


def _runner(bundle: VerifiedBundle, variant: str, threads: int):  # type: ignore[no-untyped-def]
    """The agent's own onnxruntime back end, CPU only, from the verified bytes: scored as a device runs it."""
    from edge_agent.detectors.base import DetectorOptions
    from edge_agent.detectors.onnxruntime import OnnxRuntimeDetector

    detector = OnnxRuntimeDetector(
        bundle, variant, DetectorOptions(threads=threads, extra={"providers": ["CPUExecutionProvider"]})
    )
    return detector.infer


def score_bundles(
    candidate: VerifiedBundle, released: VerifiedBundle, records: list, gate: GateConfig
) -> dict[str, Any]:
    """F2 / mAP of both bundles on ``records`` and their interleaved latencies; the gate's verdict on them."""
    from edge_agent.dataset import load_image
    from edge_agent.preprocess import letterbox
    from export import checks

    if not records:
        raise RetrainError("the held-out split is empty: nothing to gate on")
    variant = gate_variant(candidate, released, gate.variant)
    sides: dict[str, dict[str, Any]] = {}
    timed: dict[str, Any] = {}
    probes = records[: min(len(records), 10)]
    for side, bundle in (("released", released), ("candidate", candidate)):
        _, _, height, width = bundle.manifest.input.shape
        run = _runner(bundle, variant, gate.threads)
        threshold = bundle.manifest.threshold_for(variant)
        predictions, truths = checks.predict(run, records, width, height)
        at_deployed = checks.accuracy(predictions, truths, score_threshold=threshold)
        sides[side] = {
            "name": bundle.manifest.name,
            "version": bundle.manifest.version,
            "path": str(bundle.root),
            "score_threshold": threshold,
            "f2": at_deployed.f2,
            "best_f2": at_deployed.best_f2,
            "best_threshold": at_deployed.best_threshold,
            "map50": at_deployed.map50,
            "input_size": [width, height],
        }
        # Each bundle is timed on its own input size; letterboxing happens before the clock starts.
        tensors = [letterbox(load_image(r.image_path), width, height)[0] for r in probes]
        timed[side] = (run, tensors)
    # measure_latencies hands every runner the same inputs; here those are frame indices, each runner looking up
    # its own letterboxed tensor, so two input sizes can still be interleaved call by call.
    runners = {side: (lambda i, run=run, tensors=tensors: run(tensors[i])) for side, (run, tensors) in timed.items()}
    indices = list(range(len(probes)))
    latencies = checks.measure_latencies(runners, indices, runs=gate.latency_runs)  # type: ignore[arg-type]
    for side, latency in latencies.items():
        sides[side]["latency"] = latency.to_dict()
    result = judge(sides["candidate"], sides["released"], gate)
    return {"variant": variant, "frames": len(records), "threads": gate.threads, **sides, **result}


def judge(candidate: dict[str, Any], released: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    f2_drop = float(released["f2"] - candidate["f2"])
    growth = float(candidate["latency"]["median_ms"] / released["latency"]["median_ms"] - 1.0)
    reasons = []
    if f2_drop > gate.f2_tolerance:
        reasons.append(
            f"F2 dropped by {f2_drop:.3f} (v{released['version']} {released['f2']:.3f} -> "
            f"v{candidate['version']} {candidate['f2']:.3f}), more than the tolerance {gate.f2_tolerance:.3f}"
        )
    if growth > gate.latency_budget:
        reasons.append(
            f"median latency grew by {100 * growth:.1f} % ({released['latency']['median_ms']:.1f} -> "
            f"{candidate['latency']['median_ms']:.1f} ms), more than the budget {100 * gate.latency_budget:.1f} %"
        )
    return {
        "passed": not reasons,
        "reasons": reasons,
        "f2_drop": f2_drop,
        "f2_tolerance": gate.f2_tolerance,
        "latency_growth": growth,
        "latency_budget": gate.latency_budget,
    }


def gate_records(cfg: Any, eval_frames: int | None) -> list:
    """The held-out frames of the first dataset root (the training run's own split), evenly capped."""
    import copy

    from train.data import even_subset, split_records

    whole = copy.deepcopy(cfg)
    whole.data.val_limit = None
    whole.data.train_limit = None
    _, val = split_records(whole)
    return even_subset(val, eval_frames)


# -- the job ---------------------------------------------------------------------------------------------------------


def check_count_calibration(released: Manifest, count_clips: list[ClipSet], allow_uncalibrated: bool) -> None:
    """Refuse to start a job whose candidate would lose the released bundle's calibrated counting settings: without
    them the fleet would count at the best-F2 threshold again (on unfamiliar water v8 counted 265 starfish for 137
    there, 109 at its calibrated settings), and the F2 gate would not notice."""
    calibrated = sorted(name for name, v in released.variants.items() if v.counting is not None)
    if calibrated and not count_clips and not allow_uncalibrated:
        raise RetrainError(
            f"the released {released.name} v{released.version} counts at calibrated settings (variants "
            f"{', '.join(calibrated)}): pass --count-clips DIR to calibrate the candidate too, or "
            "--allow-uncalibrated-count to release it without"
        )


def retrain(opts: RetrainOptions) -> dict[str, Any]:
    """Run the whole job; returns the report (``report["gate"]["passed"]``). Raises `RetrainError` on bad input.

    On a non-zero DDP rank, returns ``{"rank": N}`` right after training."""
    from edge_agent.bundle import load_public_key

    opts.out.mkdir(parents=True, exist_ok=True)
    signing = load_private_key(opts.key)  # fail before training, not after
    release_key = load_private_key(opts.release_key) if opts.release_key else signing
    if opts.release and not opts.train_only:
        from export.release import check_url_choice
        from export.s3_store import StoreError

        try:
            check_url_choice(opts.store, opts.url_base, opts.presign_s, opts.expires_in)
        except StoreError as exc:
            raise RetrainError(f"{exc} (or pass --no-release)") from exc
    from export.counting import load_clip_sets

    try:
        count_clips = load_clip_sets(opts.count_clips)  # a wrong path fails before training, not after
    except ValueError as exc:
        raise RetrainError(str(exc)) from exc
    trusted = [load_public_key(p) for p in opts.bundle_keys] or [signing.public_key()]
    released = resolve_released(opts.store, opts.released, trusted, opts.out / "released")
    start = resolve_checkpoint(released, opts.checkpoints, opts.checkpoint)
    check_count_calibration(released.manifest, count_clips, opts.allow_uncalibrated_count)
    cfg = retrain_config(start, opts.data, opts.out, opts.epochs, opts.overrides)
    logger.info(
        "retraining %s v%d (checkpoint %s) on %s", released.manifest.name, released.manifest.version, start, opts.data
    )
    candidate_ckpt, train_metrics = train_candidate(cfg)
    if candidate_ckpt is None:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return {"rank": int(getattr(rank_zero_only, "rank", 0))}
    report: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "released": {
            "name": released.manifest.name,
            "version": released.manifest.version,
            "bundle": str(released.root),
            "checkpoint": str(start),
        },
        "data": [str(p) for p in opts.data],
        "training": {
            "epochs": opts.epochs,
            "overrides": list(opts.overrides),
            "devices": cfg.trainer.devices,
            "strategy": cfg.trainer.strategy,
            "checkpoint": str(candidate_ckpt),
            "metrics": train_metrics,
        },
    }
    if opts.train_only:
        _write_report(opts.out, report)
        return report

    version = max([released.manifest.version, *store_versions(opts.store).get(released.manifest.name, {})]) + 1
    candidate_bundle = _export(opts, candidate_ckpt, version, report, count_clips)
    if candidate_bundle is None:
        _write_report(opts.out, report)
        return report
    candidate = load_bundle(candidate_bundle, [signing.public_key()])
    records = gate_records(cfg, opts.gate.eval_frames)
    gate = score_bundles(candidate, released, records, opts.gate)
    report["gate"] = gate
    logger.info(
        "release gate %s: F2 %.3f -> %.3f, latency %.1f -> %.1f ms",
        "passed" if gate["passed"] else "REFUSED",
        gate["released"]["f2"],
        gate["candidate"]["f2"],
        gate["released"]["latency"]["median_ms"],
        gate["candidate"]["latency"]["median_ms"],
    )
    if gate["passed"] and opts.release:
        report["release"] = _release(opts, candidate, candidate_ckpt, release_key)
    _write_report(opts.out, report)
    return report


def _export(
    opts: RetrainOptions, checkpoint: Path, version: int, report: dict[str, Any], count_clips: list[ClipSet]
) -> Path | None:
    from export.chain import ChainOptions, run_chain
    from export.onnx_export import ExportError
    from export.prune import PruneConfig

    chain_out = opts.out / CANDIDATE_DIR
    try:
        chain = run_chain(
            ChainOptions(
                checkpoint=checkpoint,
                out=chain_out,
                private_key=opts.key,
                prune=PruneConfig(ratio=opts.prune_ratio, head_ratio=opts.head_ratio),
                fine_tune_epochs=opts.prune_epochs,
                calibration_frames=opts.calibration_frames,
                parity_frames=opts.parity_frames,
                eval_frames=opts.gate.eval_frames,
                latency_runs=opts.gate.latency_runs,
                threads=opts.gate.threads,
                version=version,
                count_clips=count_clips,
                # Export analysis, not release evidence: per-op profiles off, unpruned baselines only when pruned.
                profile_frames=0,
                unpruned_baselines=bool(opts.prune_ratio or opts.head_ratio),
                # The pruned model's fine-tune runs here, on rank 0 only: never a second DDP launch.
                fine_tune_overrides={"trainer.devices": 1, "trainer.strategy": "auto", "trainer.num_nodes": 1},
            )
        )
    except ExportError as exc:
        logger.error("export chain failed: %s", exc)
        report["gate"] = {"passed": False, "reasons": [f"the export chain failed: {exc}"]}
        return None
    report["export"] = {"out": str(chain_out), "bundle": chain["bundle"], "goals": chain.get("goals")}
    return chain_out / "bundle"


def _release(opts: RetrainOptions, candidate: VerifiedBundle, checkpoint: Path, release_key: Any) -> dict[str, Any]:
    from export.release import make_release, publish

    # The registry first: once devices can see the release, the next job must be able to start from it.
    registered = register_checkpoint(checkpoint, opts.checkpoints)
    result = make_release(
        candidate.root,
        store=opts.store,
        url_base=opts.url_base,
        presign_s=opts.presign_s,
        release_key=release_key,
        bundle_keys=[load_private_key(opts.key).public_key()],
        expires_in=opts.expires_in,
    )
    announcement = opts.out / "announcement.json"
    announcement.write_bytes(result.payload)
    published = None
    if opts.broker is not None:
        from edge_agent.mqtt.topics import Topics

        topic = Topics(prefix=opts.prefix, device_id="release").fleet_model(opts.fleet)
        publish(result.payload, host=opts.broker[0], port=opts.broker[1], topic=topic)
        published = topic
    return {
        "version": result.announcement.version,
        "tar": result.location,
        "url": result.announcement.url,
        "sha256": result.announcement.sha256,
        "announcement": str(announcement),
        "checkpoint": str(registered),
        "published_on": published,
    }


def _write_report(out: Path, report: dict[str, Any]) -> None:
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    (out / REPORT_MD).write_text(render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    released = report["released"]
    lines = [
        f"# Retrain report: {released['name']} v{released['version']} -> candidate",
        "",
        f"- created: {report['created_at']}",
        f"- started from: `{released['checkpoint']}` (released bundle `{released['bundle']}`)",
        f"- data: {', '.join(f'`{d}`' for d in report['data'])}",
        f"- training: {report['training']['epochs']} epoch(s), devices {report['training']['devices']}, "
        f"strategy {report['training']['strategy']}, best validation F2 "
        f"{report['training']['metrics'].get('best_val_f2', float('nan')):.3f}",
    ]
    gate = report.get("gate")
    if gate is None:
        lines += ["", "Training only (no export, no gate)."]
        return "\n".join(lines) + "\n"
    verdict = "**passed**" if gate["passed"] else "**refused**"
    lines += ["", f"## Release gate: {verdict}", ""]
    if "candidate" in gate:
        lines += [
            f"Both bundles scored in this run on the same {gate['frames']} held-out frames, variant "
            f"`{gate['variant']}`, onnxruntime CPU, {gate['threads']} threads, latencies interleaved.",
            "",
            "| | version | F2 at its threshold | threshold | best F2 | mAP@0.5 | median ms | p90 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for side in ("released", "candidate"):
            s = gate[side]
            lines.append(
                f"| {side} | {s['version']} | {s['f2']:.3f} | {s['score_threshold']:.2f} | {s['best_f2']:.3f} | "
                f"{s['map50']:.3f} | {s['latency']['median_ms']:.1f} | {s['latency']['p90_ms']:.1f} |"
            )
        lines += [
            "",
            f"- F2 drop {gate['f2_drop']:+.3f} (tolerance {gate['f2_tolerance']:.3f})",
            f"- latency growth {100 * gate['latency_growth']:+.1f} % (budget {100 * gate['latency_budget']:.1f} %)",
        ]
    for reason in gate["reasons"]:
        lines.append(f"- refused: {reason}")
    release = report.get("release")
    if release:
        lines += [
            "",
            f"## Released v{release['version']}",
            "",
            f"- bundle: `{release['tar']}` ({release['url']}, sha256 `{release['sha256'][:16]}…`)",
            f"- announcement: `{release['announcement']}`"
            + (f", published retained on `{release['published_on']}`" if release["published_on"] else ""),
            f"- checkpoint kept for the next job: `{release['checkpoint']}`",
        ]
    elif gate["passed"]:
        lines += ["", "Not released (--no-release)."]
    return "\n".join(lines) + "\n"
