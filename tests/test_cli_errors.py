"""Every `starfish` sub-command answers a wrong path, a wrong type or a missing file with one clear line and exit 2.

The commands run in this process through `starfish_cli.main` (the console script's entry point), so each case costs
an argument parse and the command's first checks, not an interpreter start; one case runs the real subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import starfish_cli
from tests.helpers.agent import REPO_ROOT

MISSING = "/nonexistent/starfish-test"
DEMO = REPO_ROOT / "models" / "demo"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs of the wrong kind: a text file where a model/key/JSON is expected, a directory where a file is."""
    root = tmp_path_factory.mktemp("cli-errors")
    text = root / "notes.txt"
    text.write_text("not a model\n")
    (root / "empty_dir").mkdir()
    synth = root / "synth"
    synth.mkdir()
    (synth / "train.csv").write_text(
        "video_id,sequence,video_frame,sequence_frame,image_id,annotations\n0,1,0,0,0-0,[]\n"
    )
    (synth / "train_images" / "video_0").mkdir(parents=True)
    key = root / "signing.pem"
    camera = root / "camera.yaml"
    camera.write_text(
        f"device_id: d\ncameras: [{{id: cam0, source: 0}}]\n"
        f"detector: {{bundle: {DEMO / 'bundle'}, trusted_keys: [{DEMO / 'demo_key.pub'}]}}\n"
    )
    from edge_agent.bundle import generate_keypair

    existing = root / "existing.pem"
    generate_keypair(existing, existing.with_suffix(".pub"))
    return {
        "text": text,
        "dir": root / "empty_dir",
        "synth": synth,
        "key": key,
        "camera_cfg": camera,
        "root": root,
        "existing": existing,
    }


RETRAIN = ["retrain", "--data", "{synth}", "--out", "{root}/job", "--key", "{existing}", "--store", "{dir}"]
RETRAIN += ["--checkpoints", "{dir}"]
# (id, argv with {placeholders}, words the one line must contain)
CASES: list[tuple[str, list[str], str]] = [
    # data
    ("data-synth-type", ["data", "synth", "--out", "{root}/s", "--videos", "many"], "--videos"),
    ("data-preview-missing", ["data", "preview", MISSING], MISSING),
    ("data-stats-missing", ["data", "stats", MISSING], MISSING),
    ("data-stats-file", ["data", "stats", "{text}"], "notes.txt"),
    ("data-ood-type", ["data", "ood", "--out", "{root}/o", "--videos", "many"], "--videos"),
    # train
    ("train-fit-config-missing", ["train", "fit", "--config", MISSING + ".yaml"], MISSING),
    ("train-fit-preset", ["train", "fit", "--preset", "nosuch"], "nosuch"),
    ("train-evaluate-missing", ["train", "evaluate", MISSING + ".ckpt", "--data", "{synth}"], MISSING),
    ("train-evaluate-not-ckpt", ["train", "evaluate", "{text}", "--data", "{synth}"], "notes.txt"),
    ("train-evaluate-type", ["train", "evaluate", "{text}", "--data", "{synth}", "--video", "x"], "--video"),
    ("train-predict-missing", ["train", "predict", MISSING + ".ckpt", MISSING, "--out", "{root}/p"], MISSING),
    # export
    ("export-onnx-missing", ["export", "onnx", MISSING + ".ckpt"], MISSING),
    ("export-onnx-not-ckpt", ["export", "onnx", "{text}"], "notes.txt"),
    ("export-int8-missing", ["export", "int8", MISSING + ".onnx", "--ckpt", MISSING + ".ckpt"], MISSING),
    ("export-prune-missing", ["export", "prune", MISSING + ".ckpt"], MISSING),
    ("export-prune-type", ["export", "prune", "{text}", "--ratio", "half"], "--ratio"),
    ("export-prune-set", ["export", "prune", "{text}", "--set", "optim.lr"], "expected SECTION.KEY=VALUE"),
    # --set goes through the training config's own parser: unknown keys and wrong types are refused before loading.
    ("export-prune-set-key", ["export", "prune", "{text}", "--set", "optim.lrx=1"], "unrecognized arguments"),
    ("export-prune-set-type", ["export", "prune", "{text}", "--set", "optim.lr=fast"], "Expected a <class 'float'>"),
    ("export-all-pruned-missing", ["export", "all", "{text}", "-k", "{text}", "--pruned", MISSING], MISSING),
    (
        "export-all-count-clips-missing",
        ["export", "all", "--untrained", "-k", "{existing}", "--out", "{root}/c", "--count-clips", MISSING],
        f"counting clips {MISSING}: not a directory",
    ),
    (
        "export-all-count-clips-not-a-clip-set",
        ["export", "all", "--untrained", "-k", "{existing}", "--out", "{root}/c", "--count-clips", "{synth}"],
        "has no synth.json",
    ),
    (
        "export-bundle-missing",
        ["export", "bundle", "--ckpt", "{text}", "--int8", MISSING, "--key", "{key}", "--version", "1"],
        MISSING,
    ),
    ("export-bundle-type", ["export", "bundle", "--ckpt", "{text}", "--key", "{key}", "--version", "one"], "--version"),
    ("export-all-missing", ["export", "all", MISSING + ".ckpt", "--key", "{key}"], MISSING),
    ("export-all-key-missing", ["export", "all", "--untrained", "--key", "{key}", "--out", "{root}/e"], "signing.pem"),
    ("export-tensorrt-missing", ["export", "tensorrt", MISSING, "--key", MISSING], MISSING),
    # keys
    ("keys-generate-existing", ["keys", "generate", "--private", "{existing}"], "--force"),
    (
        "keys-generate-dir",
        ["keys", "generate", "--private", "{dir}/sub/k.pem", "--public", "{text}/k.pub"],
        "notes.txt",
    ),
    # bundle
    ("bundle-verify-missing", ["bundle", "verify", MISSING, "--key", str(DEMO / "demo_key.pub")], MISSING),
    ("bundle-verify-bad-key", ["bundle", "verify", str(DEMO / "bundle"), "--key", "{text}"], "notes.txt"),
    (
        "bundle-verify-type",
        ["bundle", "verify", str(DEMO / "bundle"), "--key", "{text}", "--running-version", "v"],
        "--running-version",
    ),
    ("bundle-info-missing", ["bundle", "info", MISSING], MISSING),
    ("bundle-info-file", ["bundle", "info", "{text}"], "notes.txt"),
    # agent
    ("agent-run-missing", ["agent", "run", "--config", MISSING + ".yaml"], MISSING),
    ("agent-run-not-yaml", ["agent", "run", "--config", "{dir}"], "empty_dir"),
    ("agent-config-check-missing", ["agent", "config", "--check", MISSING + ".yaml"], MISSING),
    ("agent-demo-bundle-missing", ["agent", "demo", "--bundle", MISSING, "--no-start-broker"], MISSING),
    ("agent-demo-type", ["agent", "demo", "--broker-port", "eighty"], "--broker-port"),
    ("agent-measure-pipeline-missing", ["agent", "measure", "pipeline", "--config", MISSING + ".yaml"], MISSING),
    ("agent-measure-pipeline-camera", ["agent", "measure", "pipeline", "--config", "{camera_cfg}"], "video file"),
    ("agent-measure-tracking-missing", ["agent", "measure", "tracking", "--data", MISSING], MISSING),
    ("agent-measure-tracking-video", ["agent", "measure", "tracking", "--data", "{synth}", "--video", "9"], "video 9"),
    ("agent-measure-tracking-type", ["agent", "measure", "tracking", "--data", "{synth}", "--miss", "lots"], "--miss"),
    # bench
    ("bench-missing", ["bench", MISSING], MISSING),
    ("bench-run-data-missing", ["bench", "run", str(DEMO / "bundle"), "--data", MISSING], MISSING),
    ("bench-run-clip-missing", ["bench", "run", str(DEMO / "bundle"), "--clip", MISSING + ".mp4"], MISSING),
    ("bench-run-checkpoint-missing", ["bench", "run", str(DEMO / "bundle"), "--checkpoint", MISSING], MISSING),
    ("bench-run-type", ["bench", "run", str(DEMO / "bundle"), "--iterations", "lots"], "--iterations"),
    ("bench-compare-missing", ["bench", "compare", MISSING + ".json", MISSING + "2.json"], MISSING),
    ("bench-compare-not-json", ["bench", "compare", "{text}", "{text}"], "notes.txt"),
    ("bench-compare-type", ["bench", "compare", "{text}", "{text}", "--tolerance", "lots"], "--tolerance"),
    ("bench-backends-missing", ["bench", "backends", "--checkpoint", MISSING], MISSING),
    ("bench-pipeline-missing", ["bench", "pipeline", "--config", MISSING + ".yaml"], MISSING),
    ("bench-pipeline-clip-missing", ["bench", "pipeline", "--config", "{camera_cfg}", "--clip", MISSING], MISSING),
    ("bench-peak-type", ["bench", "peak", "--threads", "all"], "--threads"),
    # release and shore (their own units; a wrong type or a missing option at least)
    (
        "release-type",
        [
            "release",
            str(DEMO / "bundle"),
            "--store",
            "{root}/store",
            "--url-base",
            "http://127.0.0.1/m",
            "--key",
            "{key}",
            "--expires-days",
            "lots",
        ],
        "--expires-days",
    ),
    (
        "data-import-coco-missing",
        ["data", "import-coco", MISSING + ".json", "--images", "{dir}", "--out", "{root}/c"],
        MISSING,
    ),
    (
        "data-import-coco-not-json",
        ["data", "import-coco", "{text}", "--images", "{dir}", "--out", "{root}/c"],
        "not valid JSON",
    ),
    (
        "release-broker",
        ["release", str(DEMO / "bundle"), "--store", "{root}/store", "--url-base", "http://127.0.0.1/m"]
        + ["--key", "{key}", "--broker", "nohostport"],
        "--broker must be host:port",
    ),
    ("retrain-broker", [*RETRAIN, "--broker", "127.0.0.1:port"], "--broker must be host:port"),
    ("retrain-no-release", [*RETRAIN, "--no-release"], "no released bundle in"),
    ("retrain-count-clips", [*RETRAIN, "--no-release", "--count-clips", MISSING], "counting clips"),
    ("retrain-type", [*RETRAIN, "--epochs", "many"], "--epochs"),
    ("rollout-status-broker", ["rollout", "status", "--broker", "nohostport"], "--broker must be host:port"),
    ("rollout-status-type", ["rollout", "status", "--broker", "127.0.0.1:1", "--wait", "long"], "--wait"),
    ("shore-bench-type", ["shore", "bench", "--counts", "many"], "--counts"),
    ("shore-copy-missing-option", ["shore", "copy", "--from", "{root}/a.sqlite3"], "--to"),
    ("shore-run-type", ["shore", "run", "--mqtt-port", "eighty"], "--mqtt-port"),
    ("bench-counting-missing", ["bench", "counting", MISSING, "--data", "{synth}"], MISSING),
    ("bench-counting-data-missing", ["bench", "counting", str(DEMO / "bundle"), "--data", MISSING], MISSING),
    ("bench-counting-type", ["bench", "counting", str(DEMO / "bundle"), "--data", "{synth}", "--port", "x"], "--port"),
    ("bench-count-sweep-missing", ["bench", "count-sweep", MISSING, "--data", "{synth}"], MISSING),
    (
        "bench-count-sweep-thresholds",
        ["bench", "count-sweep", str(DEMO / "bundle"), "--data", "{synth}", "--thresholds", "0.5,high"],
        "--thresholds must be comma-separated numbers",
    ),
    (
        "bench-count-sweep-threshold-range",
        ["bench", "count-sweep", str(DEMO / "bundle"), "--data", "{synth}", "--thresholds", "0.5,1.5"],
        "score thresholds must lie in [0, 1], got [1.5]",
    ),
    (
        "bench-counting-videos",
        ["bench", "counting", str(DEMO / "bundle"), "--data", "{synth}", "--videos", "1,two"],
        "--videos must be comma-separated integers, got '1,two'",
    ),
    (
        "bench-count-sweep-min-hits-type",
        ["bench", "count-sweep", str(DEMO / "bundle"), "--data", "{synth}", "--min-hits", "3,many"],
        "--min-hits must be comma-separated integers, got '3,many'",
    ),
    (
        "bench-count-sweep-min-hits",
        ["bench", "count-sweep", str(DEMO / "bundle"), "--data", "{synth}", "--min-hits", "0,3"],
        "min_hits must be >= 1, got [0]",
    ),
    (
        "bench-count-sweep-no-truth",
        ["bench", "count-sweep", str(DEMO / "bundle"), "--data", "{synth}"],
        "has no synth.json",
    ),
]


def _fill(argv: list[str], files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]


@pytest.mark.parametrize(("argv", "expected"), [pytest.param(a, e, id=i) for i, a, e in CASES])
def test_user_mistake_gives_one_clear_line_and_exit_2(
    argv: list[str], expected: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(_fill(argv, files))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, err
    assert lines, "no error message at all"
    assert "Traceback" not in err and "╭" not in err, err
    assert expected in lines[-1], err


def test_every_sub_command_has_a_case() -> None:
    import typer

    def leaves(group, path):
        for name, sub in getattr(group, "commands", {}).items():
            yield from (leaves(sub, [*path, name]) if getattr(sub, "commands", None) else [" ".join([*path, name])])

    commands = set(leaves(typer.main.get_command(starfish_cli.app), []))
    covered = {" ".join(w for w in argv[:3] if not w.startswith(("-", "/", "{"))) for _i, argv, _e in CASES}
    covered = {c if c in commands else f"{c.split()[0]} run" for c in covered}  # `bench BUNDLE` = `bench run`
    commands -= {"agent config"} if "agent config --check" in covered else set()
    missing = sorted(c for c in commands if not any(c == k or k.startswith(c + " ") for k in covered))
    assert missing == [], f"sub-commands without a wrong-input case: {missing}"


def test_console_script_reports_one_line_too() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "starfish_cli", "bundle", "info", MISSING], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert MISSING in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
