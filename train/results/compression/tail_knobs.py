"""Where the float detection tail's time goes, and which export-time knobs shrink it (issue 15, INT8 ratio).

Run from the repository root with the project venv (CPU, 2 threads); results are written beside this file:

    python train/results/compression/tail_knobs.py profile --frames HELDOUT              # -> tail_profile.json
    python train/results/compression/tail_knobs.py knobs --frames HELDOUT --calib CALIB --models DIR  # tail_knobs.json
    python train/results/compression/tail_knobs.py time --frames HELDOUT --models DIR    # -> tail_timing.json

``profile``: onnxruntime's profiler over the committed models/demo/bundle fp32.onnx and int8_cpu.onnx: kernel ms per
frame by op type and by graph region (backbone, FPN, RPN head, RPN tail, RoIAlign, box head, box tail, other).
``knobs``: for each config (`CONFIGS`), export models/generalize/pruned.ckpt (fp32, and int8_cpu through
export.quantize.quantize_int8 with uint8 activations, as export.chain does) and best.ckpt (unpruned fp32) with those
inference settings through export.onnx_export.export_onnx, and score best-threshold F2 / mAP@0.5 on the held-out set.
``time``: every kept model of every config in ONE loop, call by call on the same frames (the machine is shared: only
ratios within one run compare), medians and 10th percentiles, then a per-region profile of each pruned model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.dataset import ReefDataset, load_image
from edge_agent.preprocess import INPUT_NAME, letterbox
from export import checks
from export.onnx_export import export_onnx
from export.prune import set_test_proposals
from export.quantize import quantize_int8
from export.runners import onnx_runner
from export.source import load_source

logger = logging.getLogger("tail_knobs")
HERE = Path(__file__).parent
THREADS = 2
PRUNED, UNPRUNED = "models/generalize/pruned.ckpt", "models/generalize/best.ckpt"

# Region of a node, from its (exported) name; first match wins. Quantize/DequantizeLinear nodes carry the name of
# the tensor they sit on, so they land in the region of the op that produced or consumes it.
REGIONS = (
    ("/backbone/fpn/", "fpn"),
    ("/backbone/", "backbone"),
    ("/rpn/head/", "rpn_head"),
    ("/rpn/", "rpn_tail"),
    ("/roi_heads/box_roi_pool/", "roi_align"),
    ("/roi_heads/box_head/", "box_head"),
    ("/roi_heads/box_predictor/", "box_predictor"),
    ("/roi_heads/", "box_tail"),
    ("/model/transform/", "normalize"),
)

# Inference-only settings. pre/post: rpn pre_nms_top_n / post_nms_top_n (test, per level / per image);
# sr: RoIAlign sampling_ratio; score: box_score_thresh; det: box_detections_per_img; anchors: aspect-ratio
# indices kept (RPN head outputs sliced to match); size: input WxH; lean: export_onnx(lean_tail=True).
CONFIGS: dict[str, dict[str, Any]] = {
    "base": {},
    "pre100": {"pre": 100},
    "post50": {"post": 50},
    "sr1": {"sr": 1},
    "score0.3": {"score": 0.3},
    "anchors1": {"anchors": [1]},
    "size768": {"size": (768, 448)},
    "combo": {"pre": 100, "post": 50, "sr": 1, "score": 0.3},
    "combo_anchors": {"pre": 100, "post": 50, "sr": 1, "score": 0.3, "anchors": [1]},
    # export_onnx's lean tail (same outputs, less work: only the RPN's top-k anchors decoded, RoIAlign levels merged
    # with one Gather); every config without "lean" exports torchvision's own path, as the committed bundle has it.
    "lean": {"lean": True},
    "lean_sr1": {"lean": True, "sr": 1},
    "lean_combo": {"lean": True, "pre": 100, "post": 50, "sr": 1, "score": 0.3},
}


def region(name: str) -> str:
    base = name.removesuffix("_kernel_time")
    if base in ("/Sub", "/Div", "/Gather", "/Unsqueeze", "/Div_output_0_q", "Transpose"):  # images[0], normalise
        return "normalize"
    if base.startswith(("If_", "NonMaxSuppression_")):  # batched NMS (RPN and box head) outside any scope
        return "nms"
    if base.startswith(("ReorderInput", "ReorderOutput")):  # onnxruntime's NCHWc layout changes around convs
        return "layout"
    for prefix, label in REGIONS:
        if prefix in name:
            return label
    if base.startswith("/") and base.count("/") == 1:  # the lean path's RPN decoding runs in the wrapper's scope
        return "rpn_tail"
    return "other"


def profile(model_path: Path, frames: Sequence[np.ndarray], threads: int = THREADS) -> dict[str, Any]:
    """Kernel ms per frame by op type, by region and by (region, op type); wall ms per run from the profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tail-prof-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "p")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        for frame in frames:
            session.run(None, {INPUT_NAME: frame})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[1][0]  # first run is a warm-up
    timed = len(runs) - 1
    by_op: Counter[str] = Counter()
    by_region: Counter[str] = Counter()
    by_both: Counter[str] = Counter()
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e.get("args", {}).get("op_name", "?")
        reg = region(name)
        by_op[op] += e["dur"]
        by_region[reg] += e["dur"]
        by_both[f"{reg}:{op}"] += e["dur"]

    def ms(counter: Counter[str]) -> dict[str, float]:
        return {k: round(v / 1000 / timed, 3) for k, v in counter.most_common()}

    return {
        "kernel_ms": round(sum(by_op.values()) / 1000 / timed, 2),
        "run_ms_median": round(float(np.median([d for _, d in runs[1:]])) / 1000, 2),
        "by_op": ms(by_op),
        "by_region": ms(by_region),
        "by_region_op": ms(by_both),
    }


def frames_from(root: Path, count: int, width: int, height: int) -> tuple[list, list[np.ndarray]]:
    records = list(ReefDataset.open(root).records)
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(count, len(records))).round().astype(int))
    chosen = [records[i] for i in picks]
    return chosen, [letterbox(load_image(r.image_path), width, height)[0] for r in chosen]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cmd_profile(args: argparse.Namespace) -> None:
    _, frames = frames_from(args.frames, args.profile_frames, 1024, 576)
    out: dict[str, Any] = {"loadavg_before": loadavg()}
    for variant in ("fp32", "int8_cpu"):
        out[variant] = profile(Path("models/demo/bundle") / f"{variant}.onnx", frames)
        logger.info("%s: %s", variant, {k: out[variant][k] for k in ("kernel_ms", "run_ms_median")})
    out["loadavg_after"] = loadavg()
    (HERE / "tail_profile.json").write_text(json.dumps(out, indent=2) + "\n")


def apply_knobs(model, cfg, knobs: dict[str, Any]) -> None:
    """Change the inference settings of a loaded torchvision Faster R-CNN in place."""
    pre = knobs.get("pre", cfg.rpn_pre_nms_top_n_test)
    post = knobs.get("post", cfg.rpn_post_nms_top_n_test)
    set_test_proposals(model, pre, post)
    if "sr" in knobs:
        model.roi_heads.box_roi_pool.sampling_ratio = knobs["sr"]
    if "score" in knobs:
        model.roi_heads.score_thresh = knobs["score"]
    if "det" in knobs:
        model.roi_heads.detections_per_img = knobs["det"]
    if "anchors" in knobs:
        keep_anchor_ratios(model, knobs["anchors"])


def keep_anchor_ratios(model, keep: list[int]) -> None:
    """Keep only the anchors of aspect-ratio indices ``keep`` (every size): the AnchorGenerator and the RPN head's
    objectness / box-delta convolutions are sliced alike (torchvision orders anchors ratio-major, deltas a*4+k)."""
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator  # type: ignore[import-untyped]

    gen = model.rpn.anchor_generator
    n_sizes = len(gen.sizes[0])
    idx = [r * n_sizes + s for r in keep for s in range(n_sizes)]
    idx4 = [a * 4 + k for a in idx for k in range(4)]
    head = model.rpn.head
    for attr, rows in (("cls_logits", idx), ("bbox_pred", idx4)):
        old = getattr(head, attr)
        new = torch.nn.Conv2d(old.in_channels, len(rows), old.kernel_size, old.stride, old.padding)
        with torch.no_grad():
            new.weight.copy_(old.weight[rows])
            new.bias.copy_(old.bias[rows])  # type: ignore[union-attr]
        setattr(head, attr, new)
    model.rpn.anchor_generator = AnchorGenerator(gen.sizes, tuple(tuple(r[i] for i in keep) for r in gen.aspect_ratios))


def build(ckpt: str, knobs: dict[str, Any], out: Path, width: int, height: int) -> Path:
    source = load_source(ckpt)
    apply_knobs(source.model, source.cfg, knobs)
    return export_onnx(source.model, out, width, height, lean_tail=bool(knobs.get("lean")))


def cmd_knobs(args: argparse.Namespace) -> None:
    """Export every config's three models into ``--models DIR/<config>/`` and score F2 (``--no-eval``: skip)."""
    import torch

    torch.set_num_threads(THREADS)
    names = args.configs.split(",") if args.configs else list(CONFIGS)
    result_path = HERE / "tail_knobs.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    for name in names:
        knobs = CONFIGS[name]
        width, height = knobs.get("size", (1024, 576))
        records, _ = frames_from(args.frames, args.eval_frames, width, height)
        _, calib = frames_from(args.calib, args.calib_frames, width, height)
        out = args.models / name
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "pruned_fp32": build(PRUNED, knobs, out / "pruned_fp32.onnx", width, height),
            "unpruned_fp32": build(UNPRUNED, knobs, out / "unpruned_fp32.onnx", width, height),
        }
        paths["pruned_int8_cpu"] = quantize_int8(
            paths["pruned_fp32"], out / "pruned_int8_cpu.onnx", calib, activations="asymmetric"
        )
        entry: dict[str, Any] = dict(results.get(name, {}))
        entry.update({"knobs": dict(knobs), "input": [width, height]})
        if not args.no_eval:
            for variant in ("pruned_fp32", "pruned_int8_cpu", "unpruned_fp32"):
                predictions, truths = checks.predict(onnx_runner(paths[variant], THREADS), records, width, height)
                acc = checks.accuracy(predictions, truths)
                entry[f"{variant}_f2"] = round(acc.best_f2, 4)
                entry[f"{variant}_thr"] = round(acc.best_threshold, 2)
                entry[f"{variant}_map50"] = round(acc.map50, 4)
            entry["eval_frames"] = len(records)
        logger.warning("%s exported to %s; %s", name, out, {k: v for k, v in entry.items() if k.endswith("_f2")})
        if not args.no_eval:  # an export-only run leaves the F2 record alone (another run may be writing it)
            results[name] = entry
            result_path.write_text(json.dumps(results, indent=2) + "\n")


def cmd_time(args: argparse.Namespace) -> None:
    """Every saved model of every config in one interleaved loop (call by call, same frames), then profiles."""
    import time

    names = args.configs.split(",") if args.configs else sorted(p.name for p in args.models.iterdir())
    runners, frames = {}, {}
    for name in names:
        width, height = CONFIGS[name].get("size", (1024, 576))
        if (width, height) not in frames:
            frames[(width, height)] = frames_from(args.frames, args.latency_frames, width, height)[1]
        for variant in ("pruned_fp32", "pruned_int8_cpu", "unpruned_fp32"):
            runners[(name, variant)] = (onnx_runner(args.models / name / f"{variant}.onnx", THREADS), (width, height))
    for runner, size in runners.values():
        for frame in frames[size][:3]:
            runner(frame)
    before = loadavg()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for i in range(args.runs):
        for key, (runner, size) in runners.items():
            batch = frames[size]
            start = time.perf_counter()
            runner(batch[i % len(batch)])
            times[key].append((time.perf_counter() - start) * 1000.0)
    after = loadavg()
    out = {"loadavg_before": before, "loadavg_after": after, "runs": args.runs, "configs": {}}
    for name in names:
        row: dict[str, Any] = {}
        for variant in ("pruned_fp32", "pruned_int8_cpu", "unpruned_fp32"):
            values = np.array(times[(name, variant)])
            row[f"{variant}_ms"] = round(float(np.median(values)), 1)
            row[f"{variant}_p10_ms"] = round(float(np.percentile(values, 10)), 1)
        for stat in ("", "_p10"):
            row[f"int8_vs_fp32{stat}"] = round(row[f"pruned_fp32{stat}_ms"] / row[f"pruned_int8_cpu{stat}_ms"], 3)
            row[f"int8_vs_unpruned{stat}"] = round(row[f"unpruned_fp32{stat}_ms"] / row[f"pruned_int8_cpu{stat}_ms"], 3)
        if args.profile_frames > 1:
            size = CONFIGS[name].get("size", (1024, 576))
            for variant in ("pruned_fp32", "pruned_int8_cpu"):
                prof = profile(args.models / name / f"{variant}.onnx", frames[size][: args.profile_frames])
                row[f"{variant}_profile"] = prof
        out["configs"][name] = row
        logger.warning("%s: %s", name, {k: v for k, v in row.items() if not k.endswith("profile")})
    (HERE / f"tail_timing{args.suffix}.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_report(args: argparse.Namespace) -> None:
    """Markdown tables (stdout) from tail_profile.json, tail_knobs.json and tail_timing<SUFFIX>.json."""
    prof = json.loads((HERE / "tail_profile.json").read_text())
    knobs = json.loads((HERE / "tail_knobs.json").read_text())
    timing = json.loads((HERE / f"tail_timing{args.suffix}.json").read_text())
    lines = [f"Committed bundle, kernel ms per frame by region (load {prof['loadavg_before']}):", ""]
    regions = sorted({r for v in ("fp32", "int8_cpu") for r in prof[v]["by_region"]})
    lines += ["| region | fp32 | int8_cpu |", "|---|---:|---:|"]
    for r in sorted(regions, key=lambda r: -prof["fp32"]["by_region"].get(r, 0)):
        lines.append(
            f"| {r} | {prof['fp32']['by_region'].get(r, 0):.1f} | {prof['int8_cpu']['by_region'].get(r, 0):.1f} |"
        )
    lines.append(f"| total kernel | {prof['fp32']['kernel_ms']:.1f} | {prof['int8_cpu']['kernel_ms']:.1f} |")
    lines += [
        "",
        f"Interleaved timing ({timing['runs']} runs, load {timing['loadavg_before']} -> "
        f"{timing['loadavg_after']}); F2 best threshold on {next(iter(knobs.values())).get('eval_frames')} "
        "held-out frames:",
        "",
    ]
    lines += [
        "| config | knobs | pruned fp32 ms | pruned int8 ms | unpruned fp32 ms | int8/fp32 (p10) | "
        "unpruned/int8 (p10) | F2 pruned fp32 | F2 pruned int8 | F2 unpruned |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in timing["configs"].items():
        k = knobs.get(name, {})
        lines.append(
            f"| {name} | {json.dumps(CONFIGS[name])} | {row['pruned_fp32_ms']} | {row['pruned_int8_cpu_ms']} | "
            f"{row['unpruned_fp32_ms']} | {row['int8_vs_fp32']:.2f} ({row['int8_vs_fp32_p10']:.2f}) | "
            f"{row['int8_vs_unpruned']:.2f} ({row['int8_vs_unpruned_p10']:.2f}) | {k.get('pruned_fp32_f2')} | "
            f"{k.get('pruned_int8_cpu_f2')} | {k.get('unpruned_fp32_f2')} |"
        )
    tail = ("rpn_tail", "roi_align", "nms", "box_tail", "box_head")
    lines += ["", "Tail kernel ms per frame (profiler, one model at a time) by region:", ""]
    lines += ["| config | variant | " + " | ".join(tail) + " | tail sum | kernel total |", "|---|---|" + "---:|" * 7]
    for name, row in timing["configs"].items():
        for variant in ("pruned_fp32", "pruned_int8_cpu"):
            regs = row[f"{variant}_profile"]["by_region"]
            cells = " | ".join(f"{regs.get(r, 0):.1f}" for r in tail)
            total = sum(regs.get(r, 0) for r in tail)
            lines.append(
                f"| {name} | {variant} | {cells} | {total:.1f} | {row[f'{variant}_profile']['kernel_ms']:.1f} |"
            )
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("export", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--profile-frames", type=int, default=11)
    k = sub.add_parser("knobs")
    k.add_argument("--frames", type=Path, required=True, help="held-out synthetic set (F2 frames)")
    k.add_argument("--calib", type=Path, required=True, help="calibration set (another synthetic video)")
    k.add_argument("--models", type=Path, required=True, help="where the exported models are kept")
    k.add_argument("--configs", default=None, help=f"comma-separated subset of {', '.join(CONFIGS)}")
    k.add_argument("--no-eval", action="store_true", help="export only (F2 already in tail_knobs.json)")
    k.add_argument("--eval-frames", type=int, default=120)
    k.add_argument("--calib-frames", type=int, default=20)
    t = sub.add_parser("time")
    t.add_argument("--frames", type=Path, required=True, help="timing frames (held-out set)")
    t.add_argument("--models", type=Path, required=True)
    t.add_argument("--configs", default=None)
    t.add_argument("--latency-frames", type=int, default=10)
    t.add_argument("--runs", type=int, default=30)
    t.add_argument("--profile-frames", type=int, default=6)
    t.add_argument("--suffix", default="", help="tail_timing<SUFFIX>.json")
    r = sub.add_parser("report")
    r.add_argument("--suffix", default="")
    args = parser.parse_args()
    {"profile": cmd_profile, "knobs": cmd_knobs, "time": cmd_time, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
