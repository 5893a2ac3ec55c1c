"""Randomized reef style: determinism, boxes only on drawn starfish, distractors never boxed, outbreak crowds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.test_synth import check_boxes_over_starfish, read_rows, render_all
from train.synth import SynthConfig, build_assets, plan_dataset, render_frame
from train.synth.distractors import KINDS, make_distractor_sprite
from train.synth.starfish import random_starfish_look

RANDOM = {
    "style": "randomized",
    "videos": 1,
    "width": 320,
    "height": 180,
    "min_size": 8,
    "sequence_length": 8,
    "workers": 1,
}


def test_same_seed_same_bytes_and_differs_from_classic(make_synthetic_dataset) -> None:
    first = make_synthetic_dataset(seed=21, frames=4, **{**RANDOM, "outbreak_fraction": 0.5})
    again = make_synthetic_dataset(seed=21, frames=4, **{**RANDOM, "outbreak_fraction": 0.5})
    classic = make_synthetic_dataset(seed=21, frames=4, **{**RANDOM, "style": "classic"})
    assert (first / "train.csv").read_bytes() == (again / "train.csv").read_bytes()
    assert (first / "synth.json").read_bytes() == (again / "synth.json").read_bytes()
    images = sorted((first / "train_images").rglob("*.jpg"))
    assert len(images) == 4
    for path in images:
        assert path.read_bytes() == (again / path.relative_to(first)).read_bytes()
        assert path.read_bytes() != (classic / path.relative_to(first)).read_bytes()


def test_worker_processes_give_identical_randomized_output(make_synthetic_dataset) -> None:
    serial = make_synthetic_dataset(seed=4, frames=4, **RANDOM)
    pooled = make_synthetic_dataset(seed=4, frames=4, **{**RANDOM, "workers": 2})
    assert (serial / "train.csv").read_bytes() == (pooled / "train.csv").read_bytes()
    for path in sorted((serial / "train_images").rglob("*.jpg")):
        assert path.read_bytes() == (pooled / path.relative_to(serial)).read_bytes()


def _only(layout, keep) -> object:
    """The layout with only the distractors for which keep(d) holds (indices renumbered)."""
    chosen = [d for d in layout.distractors if keep(d)]
    index = {id(d): i for i, d in enumerate(chosen)}
    frames = [
        [index[id(layout.distractors[i])] for i in f if id(layout.distractors[i]) in index]
        for f in layout.frame_distractors
    ]
    return dataclasses.replace(layout, distractors=chosen, frame_distractors=frames)


def _assets_for(assets, layout, kept_layout):
    pick = {id(d): sprite for d, sprite in zip(layout.distractors, assets.distractor_sprites, strict=True)}
    return dataclasses.replace(assets, distractor_sprites=[pick[id(d)] for d in kept_layout.distractors])


def test_distractors_never_carry_boxes_nor_starfish_labels() -> None:
    """Distractors under the starfish leave labels and boxes exactly as without them; those over the starfish only
    take pixels away (where they cover, nothing is starfish); neither ever adds a labelled pixel or a box."""
    config = SynthConfig(frames=6, seed=5, empty_fraction=0.0, occlusion_probability=0.5, **RANDOM)
    layout = plan_dataset(config)[0]
    assert any(d.on_top for d in layout.distractors) and any(not d.on_top for d in layout.distractors)
    assets = build_assets(layout)
    bare = _only(layout, lambda d: False)
    under = _only(layout, lambda d: not d.on_top)
    over = _only(layout, lambda d: d.on_top)
    boxes = changed = covered = 0
    for frame in range(layout.frames):
        plain = render_frame(bare, assets, frame)
        below = render_frame(under, _assets_for(assets, layout, under), frame)
        above = render_frame(over, _assets_for(assets, layout, over), frame)
        full = render_frame(layout, assets, frame)
        assert plain.distractor_mask is None
        assert np.array_equal(below.labels, plain.labels)
        assert below.annotations == plain.annotations
        assert above.distractor_mask is not None
        assert np.array_equal(above.labels, np.where(above.distractor_mask, 0, plain.labels))
        assert not (full.labels[(plain.labels == 0)]).any(), "a distractor pixel was labelled starfish"
        assert {a["track_id"] for a in full.annotations} <= {a["track_id"] for a in plain.annotations}
        boxes += check_boxes_over_starfish(full, config.width, config.height)
        covered += int((above.distractor_mask & (plain.labels > 0)).sum())
        changed += int(np.abs(full.image.astype(int) - plain.image.astype(int)).max() > 30)
    assert boxes > 0
    assert changed >= layout.frames - 1, "distractors were planned but not drawn"
    assert covered > 0, "no distractor lay over a starfish: the occlusion rule went untested"


def test_frames_with_only_distractors_have_no_annotations() -> None:
    config = SynthConfig(frames=8, seed=9, empty_fraction=1.0, outbreak_fraction=0.0, **RANDOM)
    layout = plan_dataset(config)[0]
    assert not layout.tracks
    kinds = {d.kind for d in layout.distractors}
    assert len(kinds) >= 4, kinds
    for _, _, rendered in render_all(config):
        assert rendered.annotations == [] and rendered.instances == []
        assert not rendered.labels.any()
        assert rendered.distractor_mask is not None and rendered.distractor_mask.sum() > 200


def test_outbreak_sequences_hold_dozens_of_boxed_starfish() -> None:
    config = SynthConfig(frames=8, seed=3, outbreak_fraction=1.0, **{**RANDOM, "width": 640, "height": 360})
    layouts = plan_dataset(config)
    assert layouts[0].outbreaks == [s.sequence_id for s in layouts[0].sequences]
    ids = [t.track_id for t in layouts[0].tracks]
    assert ids == list(range(1, len(ids) + 1)), "track ids stay unique and dense"
    per_frame, sizes, cut, merged = [], [], 0, 0
    for _, _, rendered in render_all(config):
        per_frame.append(check_boxes_over_starfish(rendered, config.width, config.height))
        sizes += [max(a["width"], a["height"]) for a in rendered.annotations]
        cut += sum(
            a["x"] == 0 or a["y"] == 0 or a["x"] + a["width"] == config.width or a["y"] + a["height"] == config.height
            for a in rendered.annotations
        )
        # Crowded or overlapping starfish: a kept box that also holds visible pixels of another kept starfish.
        kept = [i for i in rendered.instances if i.kept and i.box is not None]
        for inst in kept:
            x, y, w, h = inst.box
            window = rendered.labels[y : y + h, x : x + w]
            merged += any(other is not inst and (window == other.label).any() for other in kept)
    assert max(per_frame) >= 20, per_frame
    assert cut > 0, "no starfish cut by the frame edge"
    assert merged > 0, "no overlapping starfish"
    # Many small ones: the classic detector missed starfish under 30 px (at 1280 wide; this frame is 640).
    assert np.mean(np.array(sizes) < 15) >= 0.2, np.percentile(sizes, [10, 50, 90])


def test_starfish_looks_span_the_requested_ranges() -> None:
    rng = np.random.default_rng(0)
    looks = [random_starfish_look(rng) for _ in range(400)]
    arms = {look.arms for look in looks}
    assert min(arms) == 7 and max(arms) == 23
    assert {look.texture for look in looks} == {"mottled", "striped", "solid"}
    assert any(look.curl != 0 for look in looks) and any(look.curl == 0 for look in looks)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_distractor_kind_draws_something(kind: str) -> None:
    sprite = make_distractor_sprite(np.random.default_rng(1), kind, 40.0)
    coverage = sprite.masks[..., 0]
    assert coverage.max() > 0.9 and (coverage > 0.5).sum() > 20
    with pytest.raises(ValueError, match="unknown distractor"):
        make_distractor_sprite(np.random.default_rng(1), "whale", 40.0)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), empty_fraction=st.floats(0.0, 1.0), outbreak=st.floats(0.0, 1.0))
def test_property_randomized_boxes_always_over_drawn_starfish(seed, empty_fraction, outbreak) -> None:
    config = SynthConfig(
        frames=3,
        seed=seed,
        empty_fraction=empty_fraction,
        outbreak_fraction=outbreak,
        **{**RANDOM, "width": 160, "height": 96},
    )
    for _, _, rendered in render_all(config):
        check_boxes_over_starfish(rendered, config.width, config.height)


def test_cli_style_randomized_and_unknown_style(tmp_path: Path) -> None:
    from starfish_cli import app

    runner = CliRunner()
    root = tmp_path / "ds"
    base = [
        "data",
        "synth",
        "--out",
        str(root),
        "--videos",
        "1",
        "--frames",
        "3",
        "--width",
        "192",
        "--height",
        "108",
        "--min-size",
        "8",
        "--workers",
        "1",
        "--no-video",
    ]
    result = runner.invoke(app, [*base, "--style", "randomized", "--outbreak-fraction", "1"])
    assert result.exit_code == 0, result.output
    assert len(read_rows(root)) == 3
    bad = runner.invoke(app, [*base, "--style", "fancy", "--overwrite"])
    assert bad.exit_code == 2 and "--style" in bad.output and "Traceback" not in bad.output


def test_each_sequence_gets_its_own_water_and_classic_gets_none() -> None:
    config = SynthConfig(frames=8, seed=2, **RANDOM)
    layout = plan_dataset(config)[0]
    looks = build_assets(layout).sequence_looks
    assert set(looks) == {s.sequence_id for s in layout.sequences} and len(looks) >= 2
    tints = [tuple(np.round(tint, 4)) for tint, _ in looks.values()]
    assert len(set(tints)) == len(tints)
    classic = SynthConfig(frames=8, seed=2, **{**RANDOM, "style": "classic"})
    assert build_assets(plan_dataset(classic)[0]).sequence_looks == {}


def _distractors_per_frame(config: SynthConfig) -> float:
    layout = plan_dataset(config)[0]
    return float(np.mean([len(frame) for frame in layout.frame_distractors]))


def test_distractor_density_follows_its_range_and_zero_means_none() -> None:
    sparse = SynthConfig(frames=8, seed=4, distractors_per_frame=(3, 3), **RANDOM)
    dense = SynthConfig(frames=8, seed=4, distractors_per_frame=(40, 40), **RANDOM)
    none = SynthConfig(frames=8, seed=4, distractors_per_frame=(0, 0), **RANDOM)
    assert _distractors_per_frame(dense) > 4 * _distractors_per_frame(sparse) > 0
    assert _distractors_per_frame(none) == 0
    for _, _, rendered in render_all(none):
        assert rendered.distractor_mask is None or not rendered.distractor_mask.any()
    # Dense scenes keep the rule that matters: boxes only over drawn starfish, never over a distractor.
    for _, _, rendered in render_all(dense):
        check_boxes_over_starfish(rendered, dense.width, dense.height)


def test_cli_refuses_an_inverted_distractor_range(tmp_path: Path) -> None:
    from starfish_cli import app

    out = str(tmp_path / "ds")
    result = CliRunner().invoke(
        app, ["data", "synth", "--out", out, "--style", "randomized", "--distractors-per-frame", "9", "2"]
    )
    assert result.exit_code == 2 and "distractors_per_frame" in result.output and "Traceback" not in result.output
