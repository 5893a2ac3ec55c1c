"""Per-variant counting settings (manifest schema 4): signed with the bundle, refused where the schema cannot carry
them, and what the agent counts at unless its configuration says otherwise; the chain's calibration picks the
setting with the lowest mean per-clip error. The whole chain writes them in tests/test_export.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.bundle import MANIFEST_NAME, Counting, ManifestError, load_bundle, load_private_key, parse_manifest
from edge_agent.bundle.signing import sign
from edge_agent.tracking.replay import CountSetting, SettingResult
from tests.helpers.agent import Clip, agent_config
from tests.helpers.bundles import BundleKeys, rebundle

COUNTING = {"score_threshold": 0.42, "min_hits": 7, "selected_on": ["ood_val_clips"], "mean_clip_error": 0.25}


def _with_counting(tiny_bundle, dest: Path, keys: BundleKeys, **counting: object) -> Path:
    manifest = parse_manifest((tiny_bundle.path / MANIFEST_NAME).read_bytes())
    variants = manifest.model_dump(mode="json")["variants"]
    for entry in variants.values():
        entry["counting"] = {**COUNTING, **counting}
    return rebundle(tiny_bundle.path, dest, keys.private, variants=variants, schema_version=4)


def test_counting_settings_are_signed_and_read_back(tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path) -> None:
    bundle = load_bundle(_with_counting(tiny_bundle, tmp_path / "b", bundle_keys), bundle_keys.public)
    variant = bundle.manifest.default_variant
    assert bundle.manifest.counting_for(variant) == Counting(**COUNTING)  # type: ignore[arg-type]
    assert bundle.manifest.min_agent_version() == "0.2.0"  # the first agent that reads schema 4
    # a variant without settings leaves the key out, so such a manifest reads as before schema 4
    plain = json.loads((tiny_bundle.path / MANIFEST_NAME).read_text())
    assert all("counting" not in v for v in plain["variants"].values())


def test_counting_settings_need_schema_4_and_valid_values(tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path) -> None:
    variants = parse_manifest((tiny_bundle.path / MANIFEST_NAME).read_bytes()).model_dump(mode="json")["variants"]
    for entry in variants.values():
        entry["counting"] = COUNTING
    with pytest.raises(ValueError, match="need schema_version 4, got 3"):
        rebundle(tiny_bundle.path, tmp_path / "old", bundle_keys.private, variants=variants, schema_version=3)
    with pytest.raises(ValueError, match="min_hits"):
        _with_counting(tiny_bundle, tmp_path / "zero", bundle_keys, min_hits=0)
    with pytest.raises(ValueError, match="score_threshold"):
        _with_counting(tiny_bundle, tmp_path / "high", bundle_keys, score_threshold=1.5)
    # A manifest edited by hand (and signed) is refused by the loader with a ManifestError, not a traceback.
    bundle = _with_counting(tiny_bundle, tmp_path / "edited", bundle_keys)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["schema_version"] = 3
    raw = (json.dumps(data, indent=2) + "\n").encode()
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / "manifest.sig").write_bytes(sign(load_private_key(bundle_keys.private), raw))
    with pytest.raises(ManifestError, match="counting settings"):
        load_bundle(bundle, bundle_keys.public)


def test_the_agent_counts_at_the_bundles_settings_unless_configured(
    tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path, clip: Clip
) -> None:
    from edge_agent.app import load_detector
    from edge_agent.config import load_config_data

    bundle = _with_counting(tiny_bundle, tmp_path / "b", bundle_keys)
    keyed = type(tiny_bundle)(bundle, bundle_keys.public)
    detector, _ = load_detector(load_config_data(agent_config(tmp_path, keyed, clip.path, 1)))
    assert (detector.score_threshold, detector.min_hits) == (0.42, 7)
    detector.close()
    configured = agent_config(tmp_path, keyed, clip.path, 1, detector={"score_threshold": 0.3}, tracker={"min_hits": 2})
    detector, _ = load_detector(load_config_data(configured))
    assert (detector.score_threshold, detector.min_hits) == (0.3, 2)
    detector.close()
    # A bundle without settings: the best-F2 threshold and the default min_hits, as before schema 4.
    detector, _ = load_detector(load_config_data(agent_config(tmp_path, tiny_bundle, clip.path, 1)))
    assert detector.score_threshold == detector.bundle.manifest.threshold_for(detector.variant)
    assert detector.min_hits == 3
    detector.close()


@pytest.mark.mqtt
def test_the_bundles_min_hits_reaches_the_agents_tracker(
    tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path, clip: Clip, mosquitto
) -> None:
    """The untrained tiny model sees boxes on every frame of the clip. With the bundle's min_hits above the clip's
    length no track can be confirmed; with its threshold the same and min_hits 1, tracks are counted."""
    from edge_agent.app import build_agent
    from edge_agent.config import load_config_data

    counted = {}
    for min_hits in (1, 100):
        bundle = _with_counting(
            tiny_bundle, tmp_path / f"b{min_hits}", bundle_keys, min_hits=min_hits, score_threshold=0.4
        )
        keyed = type(tiny_bundle)(bundle, bundle_keys.public)
        work = tmp_path / f"run{min_hits}"
        work.mkdir()
        agent = build_agent(load_config_data(agent_config(work, keyed, clip.path, mosquitto.port)))
        assert agent.run() == 0
        counted[min_hits] = agent.summary().cameras[0].unique_count
    assert counted[1] > 0 and counted[100] == 0


@pytest.mark.mqtt
def test_a_swapped_in_bundle_brings_its_own_min_hits(
    tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path, clip: Clip, mosquitto
) -> None:
    """The trackers are built with the first bundle's min_hits; a hot swap applies the new bundle's from its first
    frame on (the same counting, not the old model's settings)."""
    from edge_agent.app import build_agent, load_detector
    from edge_agent.config import load_config_data

    agent = build_agent(load_config_data(agent_config(tmp_path, tiny_bundle, clip.path, mosquitto.port)))
    assert agent.cameras["cam0"].tracker.min_hits == 3  # the tiny bundle has no counting settings
    calibrated = _with_counting(tiny_bundle, tmp_path / "b", bundle_keys, min_hits=7)
    new_cfg = load_config_data(agent_config(tmp_path, type(tiny_bundle)(calibrated, bundle_keys.public), clip.path, 1))
    new_detector, seconds = load_detector(new_cfg)
    agent.swap_detector(new_detector, seconds)
    assert agent.run() == 0
    assert agent.cameras["cam0"].tracker.min_hits == 7


def _result(threshold: float, min_hits: int, mean_clip_error: float) -> SettingResult:
    setting = CountSetting(threshold, min_hits, 0.2, 1.5, 0.1, 0.5)
    return SettingResult(setting, {0: 1}, 1, 1, mean_clip_error, mean_clip_error, mean_clip_error)


def test_choose_averages_the_sets_and_breaks_ties_towards_the_stricter_threshold() -> None:
    from export.counting import choose

    grid = [(0.5, 3), (0.9, 2), (0.9, 5)]
    first = [_result(t, m, e) for (t, m), e in zip(grid, (0.1, 0.5, 0.3), strict=True)]
    second = [_result(t, m, e) for (t, m), e in zip(grid, (0.9, 0.1, 0.3), strict=True)]
    # means: 0.5, 0.3, 0.3 -> the tie between the two 0.9 settings goes to the lower min_hits
    assert choose([first, second]) == 1
    assert choose([first]) == 0  # one set alone: its own best
    tied = [_result(t, m, 0.2) for t, m in grid]
    assert choose([tied]) == 1  # all equal: the highest threshold, then the lowest min_hits


def test_calibration_clip_sets_must_be_generated_sets_with_videos(tmp_path: Path, synthetic_dataset: Path) -> None:
    from export.counting import load_clip_sets

    with pytest.raises(ValueError, match="not a directory"):
        load_clip_sets([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no synth.json"):
        load_clip_sets([tmp_path / "empty"])
    with pytest.raises(ValueError, match="distinct directory names"):
        load_clip_sets([synthetic_dataset, synthetic_dataset])
    (sets,) = load_clip_sets([synthetic_dataset])
    assert sets.name == synthetic_dataset.name and set(sets.clips) == set(sets.truth) and sets.clips


def test_a_release_of_a_schema_4_bundle_needs_an_agent_that_reads_it(
    tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path
) -> None:
    """An older agent must refuse the announcement (min_agent_version), not download a bundle it cannot load."""
    from edge_agent.bundle import load_public_key
    from export.release import make_release

    keys = dict(release_key=load_private_key(bundle_keys.private), bundle_keys=[load_public_key(bundle_keys.public)])
    url = "http://127.0.0.1:9/store"  # only written into the announcement; nothing connects to it
    plain = make_release(tiny_bundle.path, store=tmp_path / "s1", url_base=url, **keys)  # type: ignore[arg-type]
    assert plain.announcement.min_agent_version == "0"
    calibrated = _with_counting(tiny_bundle, tmp_path / "b", bundle_keys)
    release = make_release(calibrated, store=tmp_path / "s2", url_base=url, **keys)  # type: ignore[arg-type]
    assert release.announcement.min_agent_version == "0.2.0"
    newer = make_release(calibrated, store=tmp_path / "s3", url_base=url, min_agent_version="0.3.1", **keys)  # type: ignore[arg-type]
    assert newer.announcement.min_agent_version == "0.3.1"  # a higher floor given by the releaser stays


def test_retraining_a_calibrated_release_needs_clips_or_an_explicit_opt_out(
    tiny_bundle, bundle_keys: BundleKeys, tmp_path: Path, synthetic_dataset: Path
) -> None:
    from export.counting import load_clip_sets
    from train.retrain import RetrainError, check_count_calibration

    calibrated = load_bundle(_with_counting(tiny_bundle, tmp_path / "b", bundle_keys), bundle_keys.public).manifest
    with pytest.raises(RetrainError, match="pass --count-clips DIR to calibrate the candidate too"):
        check_count_calibration(calibrated, [], allow_uncalibrated=False)
    check_count_calibration(calibrated, [], allow_uncalibrated=True)
    check_count_calibration(calibrated, load_clip_sets([synthetic_dataset]), allow_uncalibrated=False)
    plain = load_bundle(tiny_bundle.path, tiny_bundle.public_key).manifest
    check_count_calibration(plain, [], allow_uncalibrated=False)  # nothing to lose
