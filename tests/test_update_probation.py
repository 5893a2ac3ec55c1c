"""Probation verdicts (pure logic, fed with explicit clock values): errors, fps drop, commit after frames and time."""

from __future__ import annotations

from pathlib import Path

from edge_agent.update.config import UpdateConfig
from edge_agent.update.probation import FrameRate, Probation, Verdict


def cfg(**kw) -> UpdateConfig:
    base = dict(models_dir=Path("m"), release_keys=[Path("k.pub")], probation_frames=10, probation_s=5.0)
    return UpdateConfig(**{**base, **kw})


def feed(probation: Probation, frames: int, fps: float, start: float = 0.0, ok: bool = True):
    decisions = []
    for i in range(frames):
        decision = probation.frame(ok, start + i / fps)
        if decision is not None:
            decisions.append(decision)
    return decisions


def test_commits_only_after_both_frames_and_seconds():
    probation = Probation(cfg(), update_id=1, baseline_fps=10.0, now=0.0)
    assert feed(probation, 20, fps=10.0) == []  # 20 frames but only 1.9 s
    decisions = feed(probation, 40, fps=10.0, start=2.0)
    assert [d.verdict for d in decisions] == [Verdict.COMMIT]
    assert probation.frame(True, 100.0) is None  # decided once
    assert probation.summary()["frames"] == 51  # counted up to the decision (t = 5.0 s)


def test_errors_beyond_the_limit_roll_back_at_once():
    probation = Probation(cfg(probation_max_errors=2), update_id=1, baseline_fps=10.0, now=0.0)
    decisions = feed(probation, 3, fps=10.0, ok=False)
    assert len(decisions) == 1 and decisions[0].verdict is Verdict.ROLLBACK
    assert "3 detection errors" in decisions[0].reason


def test_fps_drop_beyond_the_threshold_rolls_back():
    slow = Probation(cfg(probation_max_fps_drop=0.5), update_id=1, baseline_fps=10.0, now=0.0)
    decisions = feed(slow, 30, fps=4.0)
    assert [d.verdict for d in decisions] == [Verdict.ROLLBACK] and "fps fell from 10.00 to 4.00" in decisions[0].reason
    fine = Probation(cfg(probation_max_fps_drop=0.5), update_id=1, baseline_fps=10.0, now=0.0)
    assert [d.verdict for d in feed(fine, 40, fps=6.0)] == [Verdict.COMMIT]
    unknown = Probation(cfg(), update_id=1, baseline_fps=None, now=0.0)  # after a restart: no baseline
    assert [d.verdict for d in feed(unknown, 30, fps=1.0)] == [Verdict.COMMIT]


def test_frame_rate_needs_enough_frames_and_time():
    rate = FrameRate(window_s=10.0)
    assert rate.fps() is None
    for i in range(20):  # a start-up burst: 20 frames in 20 ms
        rate.tick(i * 0.001)
    assert rate.fps() is None
    for i in range(1, 41):
        rate.tick(1.0 + i * 0.5)
    # Only the last 10 s count: frames at 11.0 ... 21.0 s, two a second.
    assert rate.fps() == 2.0
