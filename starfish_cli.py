"""The single `starfish` command line: each unit contributes one typer sub-app.

Sub-apps are imported by module path so that a unit whose optional extra is not installed (for instance `train`
on a Jetson without torch) does not stop the others from working. Sub-app modules import heavy libraries inside
their commands, never at module level, so `starfish --help` stays fast and torch-free.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

import typer

logger = logging.getLogger("starfish")

# Third-party start-up chatter off: albumentations asks pypi.org for a newer version on import (a network call and
# an advert), Lightning suggests its cloud products. Users can still turn either back on in their environment.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# (command name, module holding `app` (a sub-app) or `COMMAND` (one command), what it is for)
SUB_APPS: tuple[tuple[str, str, str], ...] = (
    ("data", "train.data_cli", "Reef datasets: synthetic generator, OOD validation renderer, previews, statistics."),
    ("train", "train.cli", "Train and evaluate the Faster R-CNN detector (needs the `train` extra)."),
    ("export", "export.cli", "Prune, quantize and export a checkpoint to ONNX / TensorRT bundles."),
    ("keys", "export.keys_cli", "Generate ed25519 signing keys for model bundles."),
    ("retrain", "train.retrain_cli", "Cloud retraining job: fine-tune the released model, export, gate, release."),
    ("release", "export.release_cli", "Release a bundle: store its .tar, sign and publish its announcement."),
    ("rollout", "export.rollout_cli", "Model rollout: per-device update state from the broker."),
    ("bundle", "edge_agent.bundle.cli", "Inspect and verify signed model bundles (torch-free)."),
    ("agent", "edge_agent.cli", "Run the edge agent: cameras -> detection -> tracking -> MQTT."),
    ("bench", "benchmarks.cli", "Benchmark back ends: latency, throughput, memory, accuracy."),
    ("shore", "shore.cli", "Shore station: MQTT ingest into SQLite / PostgreSQL and a live web dashboard."),
)

app = typer.Typer(
    name="starfish",
    help="starfish-edge: count crown-of-thorns starfish on the edge.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("STARFISH_LOG_LEVEL", "INFO").upper())
    try:
        from rich.console import Console
        from rich.logging import RichHandler

        # Logs go to stderr so that commands printing JSON or counts on stdout stay machine-readable.
        handler: logging.Handler = RichHandler(console=Console(stderr=True), rich_tracebacks=False, show_path=False)
        fmt = "%(message)s"
    except ImportError:  # rich is a core dependency; this only guards a broken install
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.addFilter(_drop_adverts)
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)


def _drop_adverts(record: logging.LogRecord) -> bool:
    """Third-party product tips (Lightning's "💡 Tip: ... try installing litlogger") are not information."""
    return not str(record.msg).startswith("💡 Tip:")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level.")) -> None:
    _configure_logging(verbose)


def _register_sub_apps() -> None:
    for name, module_path, help_text in SUB_APPS:
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            # Only a missing unit is tolerated; a broken import inside an existing unit must surface.
            if exc.name and module_path.startswith(exc.name):
                logger.debug("sub-command %s unavailable: %s", name, exc)
                continue
            raise
        if hasattr(module, "COMMAND"):  # a unit that is one command rather than a group of them
            settings = getattr(module, "CONTEXT_SETTINGS", None)  # e.g. extra `--section.key=value` overrides
            app.command(name, help=help_text, context_settings=settings)(module.COMMAND)
        else:
            app.add_typer(module.app, name=name, help=help_text)


def _demo_clip(workdir: Path, frames: int) -> tuple[Path, int | None]:
    from train.synth.demo_clip import demo_clip  # imported on use: OpenCV and numpy are not needed for --help

    return demo_clip(workdir, frames)


def _wire_demo_clip() -> None:
    """`agent demo` makes its clip with train's synthetic reef generator where that unit is installed."""
    try:
        from edge_agent.cli import set_clip_maker
    except ModuleNotFoundError as exc:
        logger.debug("no agent sub-command: %s", exc)
        return
    if importlib.util.find_spec("train") is None or importlib.util.find_spec("train.synth") is None:
        logger.debug("agent demo has no clip generator: train.synth is not installed")
        return
    set_clip_maker(_demo_clip)


_register_sub_apps()
_wire_demo_clip()


# Exceptions that mean "the input is wrong" (a path, a file's content, a value): the command line reports them as one
# line and exit code 2 instead of a traceback. Named by module so that checking costs no import; anything else is a
# bug and keeps its traceback.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("builtins", "FileNotFoundError"),
    ("builtins", "FileExistsError"),
    ("builtins", "NotADirectoryError"),
    ("builtins", "IsADirectoryError"),
    ("builtins", "PermissionError"),
    ("edge_agent.dataset", "DatasetError"),
    ("edge_agent.annotations", "AnnotationError"),
    ("edge_agent.bundle.errors", "BundleError"),
    ("edge_agent.config", "ConfigError"),
    ("edge_agent.capture.sources", "SourceError"),
    ("edge_agent.app", "StartupError"),
    ("edge_agent.demo", "DemoError"),
    ("train.config", "ConfigError"),
    ("train.checkpoint", "CheckpointError"),
    ("train.coco_import", "CocoImportError"),
    ("train.retrain", "RetrainError"),
    ("export.rollout", "RolloutError"),
    ("export.s3_store", "StoreError"),
    ("benchmarks.frames", "FrameSourceError"),
)
EXIT_USAGE = 2

# typer >= 0.2x vendors click; its exception base is reachable through the class typer re-exports either way.
_ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def is_user_error(exc: BaseException) -> bool:
    for module_name, class_name in USER_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> None:
    """The `starfish` console script: user mistakes end in one line on stderr and exit code 2, never a traceback."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="starfish", standalone_mode=False)
    except _ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help text is already printed; nothing to add
            sys.exit(int(getattr(exc, "exit_code", EXIT_USAGE)))
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "starfish"
        hint = f" (see `{where} --help`)" if ctx is not None else ""
        message = exc.format_message()  # type: ignore[attr-defined]
        sys.stderr.write(f"{where}: {_one_line(message)}{hint}\n")
        sys.exit(int(getattr(exc, "exit_code", EXIT_USAGE)))
    except Exception as exc:
        if not is_user_error(exc):
            raise
        sys.stderr.write(f"starfish: {_one_line(str(exc)) or type(exc).__name__}\n")
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
