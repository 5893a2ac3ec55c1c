"""The edge runtime must import and run where torch does not exist (a lean Jetson image)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.no_torch import NOT_EDGE, run_without_torch


@pytest.mark.parametrize("name", ["torch", "train", "pycocotools", "tqdm"])
def test_blocker_really_blocks(name: str) -> None:
    result = run_without_torch(f"import {name}", blocked=NOT_EDGE)
    assert result.returncode != 0
    assert "blocked" in result.stderr


def test_edge_agent_imports_without_train_export_shore_or_evaluation_packages() -> None:
    """Every edge_agent module imports on a device that has none of the other units, pycocotools or tqdm."""
    result = run_without_torch(
        """
        import importlib, pkgutil, sys
        import edge_agent
        for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
            importlib.import_module(m.name)
        print(sorted({n.split(".")[0] for n in sys.modules} & set(_BlockTorch.BLOCKED)))
        """,
        blocked=NOT_EDGE,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_edge_agent_module_imports_without_torch() -> None:
    result = run_without_torch(
        """
        import importlib, json, pkgutil, sys
        import edge_agent
        names = [m.name for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")]
        for name in names:
            importlib.import_module(name)
        assert not any(m.split(".")[0] in ("torch", "torchvision") for m in sys.modules)
        print(json.dumps(names))
        """
    )
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"edge_agent.metrics", "edge_agent.dataset", "edge_agent.preprocess"} <= set(imported)


def test_edge_code_runs_without_torch() -> None:
    result = run_without_torch(
        """
        import numpy as np
        from edge_agent.preprocess import letterbox, boxes_to_source
        from edge_agent.metrics import f2_score, best_f2_threshold, coco_map

        frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
        tensor, fit = letterbox(frame, 640, 384)
        assert tensor.shape == (1, 3, 384, 640) and tensor.dtype == np.float32
        boxes = boxes_to_source(np.array([[10.0, 10.0, 50.0, 60.0]]), fit)
        assert np.allclose(boxes, [[20, 20, 100, 120]])
        gt = [np.array([[20, 20, 100, 120]])]
        pred = [(boxes, np.array([0.9]))]
        assert f2_score(pred, gt).f2 == 1.0
        assert best_f2_threshold(pred, gt).f2 == 1.0
        assert abs(coco_map(pred, gt)["map_50"] - 1.0) < 1e-9
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cli_help_works_without_torch() -> None:
    result = run_without_torch(
        """
        import sys
        from typer.testing import CliRunner
        from starfish_cli import app
        out = CliRunner().invoke(app, ["--help"])
        assert out.exit_code == 0, out.output
        print(out.output)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "starfish" in result.stdout.lower()


def test_edge_agent_source_never_imports_other_units() -> None:
    """Not even inside a function: the edge side depends on no other unit (the demo's clip maker is injected)."""
    import ast
    from pathlib import Path

    import edge_agent

    forbidden = {"train", "export", "shore", "benchmarks", "torch", "torchvision"}
    found = []
    for path in Path(edge_agent.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in forbidden]
    assert found == []
