"""Out-of-distribution validation renderer: Kaggle layout, determinism, boxes on starfish pixels, no boxes on
distractors, consistent track ids, videos, metadata, CLI errors, independence from the synthetic generator."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.dataset import ReefDataset
from train.ood import PURPOSE, OodConfig, build_sequence, generate_ood, plan_dataset, render_frame
from train.ood.render import MIN_VISIBLE_PIXELS

SMALL = {"videos": 2, "frames": 24, "width": 320, "height": 192, "seed": 2, "sequence_length": 8}
OOD_DIR = Path(__file__).resolve().parents[1] / "train" / "ood"


@pytest.fixture(scope="module")
def ood_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ood_reef")
    generate_ood(root, OodConfig(**SMALL))
    return root


def read_rows(root: Path) -> list[dict[str, str]]:
    with (root / "train.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def all_frames(config: OodConfig):
    """(plan, sequence, assets, frame, FrameRender) for every frame."""
    for plan in plan_dataset(config):
        for seq in plan.sequences:
            assets = build_sequence(config, seq)
            for frame in range(seq.start, seq.start + seq.frames):
                yield plan, seq, assets, frame, render_frame(config, plan, assets, frame)


def test_reads_with_edge_agent_reader(ood_dataset: Path) -> None:
    meta = json.loads((ood_dataset / "synth.json").read_text())
    dataset = ReefDataset.open(ood_dataset, image_size=(SMALL["width"], SMALL["height"]))
    assert dataset.report.clean, dataset.report.summary()
    assert len(dataset.records) == SMALL["videos"] * SMALL["frames"] == meta["frames"]
    assert sum(len(r.boxes) for r in dataset.records) == meta["boxes"] > 0
    assert all(r.track_ids is not None and len(r.track_ids) == len(r.boxes) for r in dataset.records)
    for record in dataset.records:
        folder = ood_dataset / "train_images" / f"video_{record.video_id}"
        assert record.image_path == folder / f"{record.video_frame}.jpg"
        assert cv2.imread(str(record.image_path)).shape == (SMALL["height"], SMALL["width"], 3)


def test_metadata_matches_csv(ood_dataset: Path) -> None:
    meta = json.loads((ood_dataset / "synth.json").read_text())
    assert meta["purpose"] == PURPOSE == "validation-only"
    assert (meta["width"], meta["height"]) == (SMALL["width"], SMALL["height"])
    tracks: dict[int, set[int]] = defaultdict(set)
    for row in read_rows(ood_dataset):
        tracks[int(row["video_id"])].update(a["track_id"] for a in ast.literal_eval(row["annotations"]))
    assert [v["distinct_starfish"] for v in meta["videos"]] == [len(tracks[v]) for v in range(SMALL["videos"])]
    assert meta["distinct_starfish"] == sum(len(t) for t in tracks.values())
    from train.synth.inspect import dataset_image_size  # the previews size frames from synth.json

    assert dataset_image_size(ood_dataset) == (SMALL["width"], SMALL["height"])


def test_track_ids_consistent(ood_dataset: Path) -> None:
    home: dict[int, tuple[int, int]] = {}
    centres: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)
    for row in read_rows(ood_dataset):
        ids = [a["track_id"] for a in ast.literal_eval(row["annotations"])]
        assert len(ids) == len(set(ids)), "one starfish, one box per frame"
        for a in ast.literal_eval(row["annotations"]):
            where = (int(row["video_id"]), int(row["sequence"]))
            assert home.setdefault(a["track_id"], where) == where, "a track id never crosses videos or sequences"
            centres[a["track_id"]][int(row["video_frame"])] = (a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    assert len(home) > 5
    # The same id is the same starfish: on consecutive frames its box centre moves a little, not across the frame.
    jumps = [np.hypot(c[f][0] - c[f - 1][0], c[f][1] - c[f - 1][1]) for c in centres.values() for f in c if f - 1 in c]
    assert jumps and max(jumps) < 0.25 * SMALL["width"]


def test_videos_have_every_frame(ood_dataset: Path) -> None:
    for video in range(SMALL["videos"]):
        capture = cv2.VideoCapture(str(ood_dataset / "videos" / f"video_{video}.mp4"))
        assert capture.isOpened()
        count = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            assert image.shape == (SMALL["height"], SMALL["width"], 3)
            count += 1
        capture.release()
        assert count == SMALL["frames"]


def test_deterministic_per_seed(tmp_path: Path) -> None:
    settings = {**SMALL, "videos": 1, "frames": 10}
    roots = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_ood(tmp_path / name, OodConfig(**{**settings, "seed": seed}))
        roots.append(tmp_path / name)

    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".mp4"
        }

    first, again, other = (files(r) for r in roots)
    assert first == again
    assert first.keys() == other.keys()
    assert first["train.csv"] != other["train.csv"]
    assert sum(first[k] != other[k] for k in first if k.endswith(".jpg")) == settings["frames"]


def test_boxes_are_tight_boxes_of_starfish_pixels() -> None:
    config = OodConfig(**SMALL)
    boxes = small = edge = crowded = 0
    for _plan, seq, _assets, _frame, rendered in all_frames(config):
        ids = {f.track_id for f in seq.starfish}
        assert set(np.unique(rendered.labels)) <= ids | {0}
        kept = [i for i in rendered.instances if i.box is not None]
        assert len(kept) == len(rendered.annotations)
        for inst, ann in zip(kept, rendered.annotations, strict=True):
            x, y, w, h = ann["x"], ann["y"], ann["width"], ann["height"]
            assert ann["track_id"] == inst.track_id
            assert x >= 0 and y >= 0 and x + w <= config.width and y + h <= config.height
            mask = rendered.labels == inst.track_id
            assert mask.sum() == inst.visible_pixels >= MIN_VISIBLE_PIXELS
            ys, xs = np.nonzero(mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert inst.visible_fraction >= config.min_visible_fraction
            small += max(w, h) < 30
            edge += x == 0 or y == 0 or x + w == config.width or y + h == config.height
        # Starfish without a box are the barely visible ones.
        for inst in rendered.instances:
            if inst.box is None:
                assert inst.visible_pixels < MIN_VISIBLE_PIXELS or inst.visible_fraction < config.min_visible_fraction
        boxes += len(kept)
        crowded = max(crowded, len(kept))
    # The hard cases the shipped model misses are present: small, cut by the frame edge, crowded frames.
    assert boxes > 50 and small > 0 and edge > 0 and crowded >= 10


def test_boxes_lie_on_drawn_starfish_and_distractors_get_none() -> None:
    config = OodConfig(**SMALL)
    plan = plan_dataset(config)[0]
    seq = max(plan.sequences, key=lambda s: len(s.starfish))
    assets = build_sequence(config, seq)
    # The same sequence without its starfish: same reef, distractors, water and noise, and no boxes at all.
    bare_plan = replace(plan, sequences=[replace(s, starfish=[]) if s is seq else s for s in plan.sequences])
    bare_seq = bare_plan.sequence_at(seq.start)
    checked = 0
    for frame in range(seq.start, seq.start + seq.frames):
        rendered = render_frame(config, plan, assets, frame)
        bare = render_frame(config, bare_plan, assets, frame)
        assert bare.annotations == [] and not bare.labels.any()
        assert bare.image.std() > 5  # there is a reef with corals and distractors to see
        diff = np.abs(rendered.image.astype(np.int16) - bare.image.astype(np.int16)).sum(axis=2)
        for ann in rendered.annotations:
            mask = rendered.labels == ann["track_id"]
            assert diff[mask].mean() > 8, "the box's pixels are drawn starfish, not reef"
            checked += 1
    assert bare_seq.starfish == [] and checked > 0


def test_ood_never_imports_the_generator() -> None:
    for path in OOD_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n.startswith("train.synth") for n in names), f"{path.name} imports {names}"
    code = "import sys, train.ood, train.ood.writer; print(any(m.startswith('train.synth') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=OOD_DIR.parents[1]
    )
    assert out.stdout.strip() == "False"


def test_cli_writes_and_rejects_bad_input(tmp_path: Path) -> None:
    from train.data_cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "ood",
            "--out",
            str(tmp_path / "d"),
            "--videos",
            "1",
            "--frames",
            "3",
            "--width",
            "256",
            "--height",
            "160",
            "--no-video",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(read_rows(tmp_path / "d")) == 3 and not (tmp_path / "d" / "videos").exists()
    again = runner.invoke(app, ["ood", "--out", str(tmp_path / "d"), "--frames", "3"])
    assert again.exit_code == 2 and "overwrite" in again.output and "Traceback" not in again.output
    odd = runner.invoke(app, ["ood", "--out", str(tmp_path / "e"), "--width", "321"])
    assert odd.exit_code == 2 and "--width" in odd.output and "Traceback" not in odd.output


def test_training_refuses_the_validation_only_set(ood_dataset: Path, synthetic_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from edge_agent.dataset import DatasetError
    from train.config import load_config
    from train.data import ood_records, split_records

    def config(*overrides: str):
        return load_config(
            "smoke",
            overrides=[
                f"--checkpoint.output_dir={tmp_path}",
                "--data.check_images=exists",
                "--data.image_size=[320,192]",
                *overrides,
            ],
        )

    with pytest.raises(DatasetError, match="validation-only"):
        split_records(config(f"--data.root={ood_dataset}"))
    with pytest.raises(DatasetError, match="data.extra_roots"):
        split_records(config(f"--data.root={synthetic_dataset}", f"--data.extra_roots=[{ood_dataset}]"))
    # Where it belongs, it is read: every frame of every video.
    records = ood_records(config(f"--data.root={synthetic_dataset}", f"--data.ood_root={ood_dataset}"))
    assert len(records) == SMALL["videos"] * SMALL["frames"]
    train, _ = split_records(config(f"--data.root={synthetic_dataset}", f"--data.ood_root={ood_dataset}"))
    assert not any(str(r.image_path).startswith(str(ood_dataset)) for r in train)
