"""The Kaggle-layout reader: safe parsing, clipping, counted skips, lazy decoding, leak-free splits."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.annotations import AnnotationError, clip_boxes, format_annotations, parse_annotations, xywh_to_xyxy
from edge_agent.dataset import DatasetError, ImageDecodeError, ReefDataset, load_image

COLUMNS = ["video_id", "sequence", "video_frame", "sequence_frame", "image_id", "annotations"]


def _write_dataset(root: Path, rows: list[dict], *, width: int = 64, height: int = 36, images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()) if rows else COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if images:
        for row in rows:
            try:
                path = root / "train_images" / f"video_{int(row['video_id'])}" / f"{int(row['video_frame'])}.jpg"
            except (ValueError, KeyError):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((height, width, 3), 90, dtype=np.uint8))
    return root


def _row(video: int, seq: int, frame: int, annotations: str = "[]") -> dict:
    return {
        "video_id": video,
        "sequence": seq,
        "video_frame": frame,
        "sequence_frame": frame,
        "image_id": f"{video}-{frame}",
        "annotations": annotations,
    }


# ---------------------------------------------------------------- annotation parsing


def test_parse_valid_and_empty() -> None:
    assert parse_annotations("[]") == []
    assert parse_annotations("") == []
    parsed = parse_annotations("[{'x': 1, 'y': 2, 'width': 30, 'height': 40, 'track_id': 7}]")
    assert parsed == [{"x": 1, "y": 2, "width": 30, "height": 40, "track_id": 7}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('echo pwned')", "not a Python literal"),
        ("{'x': 1}", "must be a list"),
        ("[1, 2]", "must be a dict"),
        ("[{'x': 1, 'y': 2, 'width': 3}]", "lacks height"),
        ("[{'x': 'a', 'y': 2, 'width': 3, 'height': 4}]", "not a finite number"),
        ("[{'x': 1, 'y': 2, 'width': -3, 'height': 4}]", "negative size"),
        ("[{'x': True, 'y': 2, 'width': 3, 'height': 4}]", "not a finite number"),
        ("[{'x': 1, 'y': 2, 'width': 3, 'height': float('nan')}]", "not a Python literal"),
        ("[{'x': 1", "not a Python literal"),
    ],
)
def test_parse_rejects_malformed_annotations(text: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=message) as info:
        parse_annotations(text, row="17")
    assert "row 17" in str(info.value)


@given(
    st.lists(
        st.tuples(st.integers(-50, 300), st.integers(-50, 300), st.integers(0, 200), st.integers(0, 200)), max_size=8
    ),
    st.integers(8, 320),
    st.integers(8, 320),
)
@settings(max_examples=100, deadline=None)
def test_clipped_boxes_lie_inside_and_are_not_degenerate(raw, width: int, height: int) -> None:
    boxes, keep = clip_boxes(xywh_to_xyxy(np.array(raw, dtype=np.float32).reshape(-1, 4)), width, height)
    assert keep.shape == (len(raw),)
    assert len(boxes) == int(keep.sum())
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert ((boxes[:, 2] - boxes[:, 0]) > 1).all() and ((boxes[:, 3] - boxes[:, 1]) > 1).all()


@given(
    st.lists(
        st.tuples(
            st.integers(0, 500), st.integers(0, 500), st.integers(2, 150), st.integers(2, 150), st.integers(0, 99)
        ),
        max_size=6,
    )
)
@settings(max_examples=60, deadline=None)
def test_annotation_format_round_trips(raw) -> None:
    xywh = np.array([r[:4] for r in raw], dtype=np.float32).reshape(-1, 4)
    ids = np.array([r[4] for r in raw], dtype=np.int64)
    parsed = parse_annotations(format_annotations(xywh_to_xyxy(xywh), ids))
    assert [(b["x"], b["y"], b["width"], b["height"], b["track_id"]) for b in parsed] == [tuple(r) for r in raw]


# ---------------------------------------------------------------- reader


def test_reader_indexes_frames_and_keeps_empty_ones(tmp_path: Path) -> None:
    rows = [
        _row(0, 10, 0, "[]"),
        _row(0, 10, 1, "[{'x': 5, 'y': 5, 'width': 20, 'height': 10}]"),
        _row(1, 20, 0, "[{'x': 60, 'y': 30, 'width': 20, 'height': 20}, {'x': 1, 'y': 1, 'width': 9, 'height': 9}]"),
    ]
    dataset = ReefDataset.open(_write_dataset(tmp_path, rows), image_size=(64, 36))
    assert len(dataset) == 3
    assert dataset.records[0].is_empty
    np.testing.assert_allclose(dataset.records[1].boxes, [[5, 5, 25, 15]])
    # The first box of the last row is clipped to the 64x36 frame (60..64 x 30..36), the second kept whole.
    np.testing.assert_allclose(dataset.records[2].boxes, [[60, 30, 64, 36], [1, 1, 10, 10]])
    assert dataset.report.clean
    image = load_image(dataset.records[0].image_path)
    assert image.shape == (36, 64, 3) and image.dtype == np.uint8


def test_reader_counts_every_problem_and_names_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        _row(0, 10, 0, "[{'x': 1, 'y': 1, 'width': 10, 'height': 10}]"),
        _row(0, 10, 1, "'not a list'"),
        {**_row(0, 10, 2), "video_frame": "two"},
        _row(0, 10, 3, "[{'x': 100, 'y': 100, 'width': 10, 'height': 10}]"),  # wholly outside: dropped
        _row(0, 10, 4),  # image will be deleted
        _row(0, 10, 5),  # image will be truncated
        _row(0, 10, 6, "[{'x': -5, 'y': 2, 'width': 3, 'height': 4}]"),  # 1 px wide after clipping: dropped
    ]
    root = _write_dataset(tmp_path, rows)
    (root / "train_images/video_0/4.jpg").unlink()
    truncated = root / "train_images/video_0/5.jpg"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with caplog.at_level("WARNING"):
        dataset = ReefDataset.open(root, image_size=(64, 36))
    report = dataset.report
    assert [r.video_frame for r in dataset.records] == [0, 3, 6]
    assert len(report.skipped_rows) == 2
    assert any("row 3" in s and "must be a list" in s for s in report.skipped_rows)
    assert any("row 4" in s and "video_frame" in s for s in report.skipped_rows)
    assert report.dropped_boxes == 2
    assert len(report.missing_images) == 1 and len(report.undecodable_images) == 1
    summary_lines = [r.message for r in caplog.records if "undecodable" in r.message]
    assert len(summary_lines) == 1 and "1 missing and 1 undecodable" in summary_lines[0]


def test_missing_columns_and_missing_csv_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no train.csv"):
        ReefDataset.open(tmp_path)
    (tmp_path / "train.csv").write_text("video_id,video_frame\n0,0\n")
    with pytest.raises(DatasetError, match="sequence"):
        ReefDataset.open(tmp_path)


def test_undecodable_image_raises_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage\xff\xd9")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        load_image(bad)
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_splits_never_share_a_video_or_sequence(tmp_path: Path) -> None:
    rows = [_row(v, v * 10 + s, f) for v in range(3) for s in range(2) for f in range(s * 3, s * 3 + 3)]
    dataset = ReefDataset.open(_write_dataset(tmp_path, rows), image_size=(64, 36))
    train, val = dataset.split("video_id", val=[2])
    assert {r.video_id for r in val} == {2} and 2 not in {r.video_id for r in train}
    train, val = dataset.split("sequence", val=[1, 21])
    assert {r.sequence for r in val} == {1, 21}
    assert not {r.sequence for r in train} & {r.sequence for r in val}
    assert len(train) + len(val) == len(dataset)
    with pytest.raises(DatasetError, match="not offered"):
        dataset.split("frame", val=[0])  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="not in dataset"):
        dataset.split("video_id", val=[9])
    with pytest.raises(DatasetError, match="train split .* is empty"):
        dataset.split("video_id", val=[0, 1, 2])


def test_stats_report_empty_fraction_and_sizes(tmp_path: Path) -> None:
    rows = [_row(0, 0, 0), _row(0, 0, 1, "[{'x': 0, 'y': 0, 'width': 10, 'height': 10}]"), _row(0, 0, 2), _row(0, 0, 3)]
    stats = ReefDataset.open(_write_dataset(tmp_path, rows), image_size=(64, 36)).stats()
    assert stats["frames"] == 4 and stats["boxes"] == 1
    assert stats["empty_fraction"] == pytest.approx(0.75)
    assert stats["box_side_px_percentiles"]["50"] == pytest.approx(10.0)
