"""`starfish data import-coco`: COCO labels of harvested frames become a dataset root the training side reads.

Real files throughout: JPEG and PNG frames written with OpenCV, a COCO JSON as CVAT writes it (float boxes, extra
keys), the dataset read back by the same reader `starfish train` uses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import starfish_cli
from edge_agent.dataset import ReefDataset
from train.coco_import import CocoImportError, import_coco

W, H = 320, 180


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


@pytest.fixture()
def harvested(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Two devices' snapshots (one PNG among them) and a CVAT-style COCO export of their labels."""
    images = tmp_path / "snapshots"
    names = [
        "reef-01/cam0/20261201T101500-000040.jpg",
        "reef-01/cam0/20261201T101000-000010.jpg",
        "reef-01/cam0/20261201T102000-000090.png",
        "reef-02/cam0/20261201T110000-000005.jpg",
    ]
    for i, name in enumerate(names):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), _frame(i))
    coco = {
        "info": {"description": "CVAT export"},
        "licenses": [],
        "categories": [{"id": 1, "name": "COTS", "supercategory": ""}],
        "images": [{"id": i + 1, "file_name": n, "width": W, "height": H, "license": 0} for i, n in enumerate(names)],
        "annotations": [
            # image 1 (the 10:15 frame) holds two starfish, one touching the right edge (float rounding past it)
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.4, 20.0, 30.2, 25.0], "area": 755, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [300.0, 100.0, 20.3, 30.0], "iscrowd": 0},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [50, 60, 40, 40], "segmentation": []},
            {"id": 4, "image_id": 4, "category_id": 1, "bbox": [0, 0, 16, 12]},
        ],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    return path, images, coco


def test_import_writes_the_kaggle_layout_the_reader_and_the_split_use(harvested, tmp_path: Path) -> None:
    source, images, _ = harvested
    root = tmp_path / "reef"
    summary = import_coco(source, images, root)
    assert (summary.frames, summary.boxes, summary.empty_frames) == (4, 4, 1)
    assert summary.videos == {"reef-01/cam0": 0, "reef-02/cam0": 1}
    dataset = ReefDataset.open(root, image_size=(W, H), check_images="header")
    assert dataset.report.clean and len(dataset.records) == 4
    by_frame = {(r.video_id, r.video_frame): r for r in dataset.records}
    # frames in name (= time) order within a device folder: 10:10, 10:15, 10:20
    first, second, third = (by_frame[(0, i)] for i in range(3))
    assert first.is_empty and len(second.boxes) == 2 and len(third.boxes) == 1
    np.testing.assert_allclose(second.boxes[0], [10, 20, 41, 45], atol=1)
    assert second.boxes[1][2] == pytest.approx(W)  # clipped to the border, not dropped
    np.testing.assert_allclose(by_frame[(1, 0)].boxes[0], [0, 0, 16, 12])
    # JPEG bytes are copied as they are; the PNG became a JPEG the reader decodes at the same size
    assert (root / "train_images" / "video_0" / "0.jpg").read_bytes() == (
        images / "reef-01/cam0/20261201T101000-000010.jpg"
    ).read_bytes()
    assert cv2.imread(str(root / "train_images" / "video_0" / "2.jpg")).shape == (H, W, 3)
    train, val = dataset.split(by="video_id", val=[1])
    assert {r.video_id for r in train} == {0} and {r.video_id for r in val} == {1}
    meta = json.loads((root / "import.json").read_text())
    assert meta["width"] == W and meta["videos"] == {"0": "reef-01/cam0", "1": "reef-02/cam0"}
    with pytest.raises(FileExistsError):
        import_coco(source, images, root)
    assert import_coco(source, images, root, overwrite=True, first_video_id=5).videos == {
        "reef-01/cam0": 5,
        "reef-02/cam0": 6,
    }
    assert sorted(p.name for p in (root / "train_images").iterdir()) == ["video_5", "video_6"]


def _broken(coco: dict[str, Any], change: str) -> dict[str, Any]:
    coco = copy.deepcopy(coco)
    if change == "outside":
        coco["annotations"][0]["bbox"] = [300, 20, 40, 25]
    elif change == "negative":
        coco["annotations"][0]["bbox"] = [-5, 20, 30, 25]
    elif change == "no-area":
        coco["annotations"][0]["bbox"] = [10, 20, 0, 25]
    elif change == "unknown-category-name":
        coco["categories"].append({"id": 2, "name": "fish"})
    elif change == "unlisted-category":
        coco["annotations"][0]["category_id"] = 7
    elif change == "unlisted-image":
        coco["annotations"][0]["image_id"] = 99
    elif change == "missing-image":
        coco["images"][0]["file_name"] = "reef-01/cam0/gone.jpg"
    elif change == "wrong-size":
        coco["images"][0]["width"] = 640
    elif change == "no-images-key":
        del coco["images"]
    elif change == "bad-bbox":
        coco["annotations"][0]["bbox"] = [1, 2, 3]
    elif change == "escape":
        coco["images"][0]["file_name"] = "../annotations.json"
    return coco


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("outside", "lies outside its image reef-01/cam0/20261201T101500-000040.jpg (320x180)"),
        ("negative", "lies outside its image"),
        ("no-area", "box has no area"),
        ("unknown-category-name", "unknown category 'fish' (id 2)"),
        ("unlisted-category", "category id 7, which the file does not list"),
        ("unlisted-image", "image id 99, which the file does not list"),
        ("missing-image", "image reef-01/cam0/gone.jpg (id 1) is missing"),
        ("wrong-size", "is 320x180 but the COCO file says 640x180"),
        ("no-images-key", "'images' must be a list"),
        ("bad-bbox", "bbox must be [x, y, width, height]"),
        ("escape", "without '..'"),
    ],
)
def test_bad_labels_are_refused_before_anything_is_written(harvested, tmp_path: Path, change: str, words: str) -> None:
    source, images, coco = harvested
    source.write_text(json.dumps(_broken(coco, change)))
    with pytest.raises(CocoImportError) as info:
        import_coco(source, images, tmp_path / "reef")
    assert words in str(info.value)
    assert not (tmp_path / "reef").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".reef")]  # no staging directory left


def test_the_command_line_says_one_line_and_exits_2(harvested, tmp_path: Path, capsys) -> None:
    source, images, coco = harvested
    source.write_text(json.dumps(coco)[:-7])  # a truncated export
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(["data", "import-coco", str(source), "--images", str(images), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"starfish: {source} is not valid JSON: "), err
    assert "line 1 column" in lines[0] and "Traceback" not in err
    source.write_text(json.dumps(coco))
    with pytest.raises(SystemExit) as exit_info:
        argv = ["data", "import-coco", str(source), "--images", str(images), "--out", str(tmp_path / "r")]
        starfish_cli.main([*argv, "--category", "x"])
    assert exit_info.value.code == 2
    assert "unknown category 'COTS'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(["data", "import-coco", str(source), "--images", str(images), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 0
    assert "wrote 4 frames (4 boxes, 1 empty) at 320x180 in 2 video(s)" in capsys.readouterr().out
