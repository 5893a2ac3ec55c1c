"""Typed training configuration: YAML presets + command-line overrides, validated before anything trains.

jsonargparse turns the dataclasses below into a parser, so ``--config train/configs/smoke.yaml --data.root=DIR
--optim.lr=0.002`` works, and an unknown key or a wrong type fails with a message that names the key
(``Group 'data' does not accept option 'bogus'``, ``Parser key "optim.lr": Expected a <class 'float'>``).
Named presets live in ``train/configs/<name>.yaml`` and fail loudly on an unknown name.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from train.model import ModelConfig

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the offending key or preset."""


@dataclass
class DataConfig:
    """Where the frames come from and how they are split and batched."""

    # Dataset directory in the Kaggle layout (train.csv + train_images/); synthetic data uses the same layout.
    root: str = ""
    # Split by whole videos or whole sequences: neighbouring frames are near-duplicates, never split by frame.
    split_by: Literal["video_id", "sequence"] = "video_id"
    # Held-out ids (of `split_by`); empty means "the last one".
    val: list[int] = field(default_factory=list)
    # Frame size (width, height) used to clip annotation boxes without decoding images.
    image_size: tuple[int, int] = (1280, 720)
    batch_size: int = 2
    val_batch_size: int = 4
    num_workers: int = 0
    # Caps on frames per split (None: all). Validation frames are taken with an even stride over the video so that
    # a capped validation still covers it end to end, empty frames included.
    train_limit: int | None = None
    val_limit: int | None = None
    # "header" checks every JPEG up front; "exists" is faster for large sets.
    check_images: Literal["none", "exists", "header"] = "exists"
    # More dataset roots whose every frame trains (e.g. the domain-randomized reef next to the plain one, or real
    # footage next to synthetic); only `root` is split.
    extra_roots: list[str] = field(default_factory=list)
    # An out-of-distribution validation set (every video; e.g. `starfish data ood`, never trained on). When set,
    # checkpoint and score-threshold selection use its F2; the in-distribution held-out split is still scored and
    # logged beside it.
    ood_root: str | None = None
    ood_limit: int | None = None


@dataclass
class AugmentConfig:
    """Underwater-video augmentations (albumentations); all probabilities are per sample."""

    enabled: bool = True
    # albumentations keeps its own random state: this seed (with the epoch and the sample index) decides every
    # augmented sample, so the same seed gives the same batch whatever the worker count.
    seed: int = 0
    hflip: float = 0.5
    vflip: float = 0.0
    colour: float = 0.6
    # Probability of a colour change no reef makes (grey, swapped channels or a hue turned anywhere): a detector
    # that turns colour-blind on grey frames has learned the generator's palettes, not the starfish's shape.
    colour_invariance: float = 0.0
    blur: float = 0.3
    haze: float = 0.15
    noise: float = 0.2
    # Bbox-safe random resized crop (keeps every box) and scale/translate jitter (may push boxes out: counted).
    crop: float = 0.3
    # Train on square crops of this side (pixels at the working size) instead of whole frames; a crop holds at
    # least one starfish when the frame has any. A step then costs ~crop area / frame area of a full-frame step,
    # which is what makes CPU training affordable. Validation and inference always see whole frames.
    train_crop: int | None = None
    # Share of those crops taken anywhere in the frame, starfish or not. The rest hold at least one starfish, so
    # without these the detector rarely meets the coral, urchins and other species far from any COTS, which is
    # where its false positives out of distribution come from.
    background_crop: float = 0.0
    affine: float = 0.3
    scale: tuple[float, float] = (0.75, 1.25)
    # Boxes cut by a geometric op keep at least this fraction of their area, else they are dropped (and counted).
    min_visibility: float = 0.3
    min_box_side: float = 2.0

    def __post_init__(self) -> None:
        for name in ("background_crop", "colour_invariance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    # Linear warm-up over this many optimizer steps, then cosine decay to lr * final_lr_fraction at max steps.
    warmup_steps: int = 100
    scheduler: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = 0.05


@dataclass
class TrainerConfig:
    """Passed to `lightning.Trainer`; multi-GPU / multi-node come from Lightning itself."""

    max_epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # "16-mixed" / "bf16-mixed" on GPU; CPU training stays "32-true".
    precision: str = "32-true"
    log_every_n_steps: int = 10
    # float: fraction of an epoch; int: every N training batches.
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int = 1
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    num_sanity_val_steps: int = 0
    gradient_clip_val: float | None = 10.0
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    # torch intra-op threads for CPU runs (None: torch's default).
    num_threads: int | None = None
    enable_progress_bar: bool = False


@dataclass
class LoggerConfig:
    # Weights & Biases: offline automatically when WANDB_API_KEY is absent (never prompts).
    wandb: bool = False
    project: str = "starfish-edge"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    # Log images with ground-truth (green) and predicted (red) boxes every N validations (0: never).
    image_every_n_val: int = 1
    num_images: int = 4
    csv: bool = True


@dataclass
class CheckpointConfig:
    # Where every run writes its resolved config, checkpoints and metrics: <output_dir>/<name>/.
    output_dir: str = "runs"
    name: str = "run"
    save_last: bool = True
    # How many best-by-F2 checkpoints to keep (-1: every validation's, e.g. to compare steps afterwards).
    save_top_k: int = 1
    # Copy the first checkpoint that exists here too (an early, usable model for the export side).
    early_copy: str | None = None
    # Copy the best-by-F2 checkpoint here at the end (and whenever it improves).
    best_copy: str | None = None
    # Resume from this Lightning checkpoint (optimizer, scheduler and loop state included).
    resume: str | None = None
    # Start from these weights (a checkpoint of the same architecture) with a fresh optimizer and schedule,
    # e.g. a second, lower-learning-rate stage.
    init_weights: str | None = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def digest(self) -> str:
        """sha256 of the resolved config (for the bundle's `training.config_digest`)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _plain(value: Any) -> Any:
    """Tuples become lists so the dict is YAML/JSON- and `torch.load(weights_only=True)`-friendly."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _parser():  # -> jsonargparse.ArgumentParser (imported lazily: the CLI root must stay light)
    from jsonargparse import ActionConfigFile, ArgumentParser

    # allow_abbrev=False: a misspelt `--trainer.max_epoch` must fail, not be expanded to `max_epochs`.
    parser = ArgumentParser(prog="starfish train fit", exit_on_error=False, default_env=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable; later wins).")
    parser.add_class_arguments(TrainConfig, None)
    return parser


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if name == "sweep" or not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "sweep")
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available)}")
    return path


def _namespace_to_config(parser: Any, namespace: Any) -> TrainConfig:
    # jsonargparse leaves nested groups as Namespaces until instantiated into their dataclasses.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    built = instantiate(namespace)
    values = {k: v for k, v in vars(built).items() if k != "config" and not k.startswith("__")}
    return TrainConfig(**values)


def _one_line(exc: Exception) -> str:
    # jsonargparse spreads one problem over several indented lines; a user error is one line.
    return " ".join(str(exc).split())


def load_config(
    preset: str | None = None,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """Resolve preset -> config files -> ``--key=value`` overrides into a validated :class:`TrainConfig`."""
    from jsonargparse import ArgumentError

    args: list[str] = []
    if preset:
        args += ["--config", str(preset_path(preset))]
    for path in config_files:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        args += ["--config", str(path)]
    args += list(overrides)
    parser = _parser()
    try:
        namespace = parser.parse_args(args)
    except ArgumentError as exc:
        raise ConfigError(f"invalid training config: {_one_line(exc)}") from None
    return _namespace_to_config(parser, namespace)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict (e.g. from a sweep or a checkpoint) exactly like a YAML file."""
    from jsonargparse import ArgumentError

    parser = _parser()
    try:
        namespace = parser.parse_object(data)
    except ArgumentError as exc:
        raise ConfigError(f"invalid training config: {_one_line(exc)}") from None
    return _namespace_to_config(parser, namespace)


def dotted_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``SECTION.KEY=VALUE`` strings, parsed and type-checked exactly as the train CLI parses ``--SECTION.KEY=VALUE``
    (unknown keys and values of the wrong type raise `ConfigError`): ``{"section.key": typed value}``."""
    keys = []
    for item in items:
        key, sep, _value = item.partition("=")
        if not sep or key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"{item!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=0.0002")
        keys.append(key)
    cfg = load_config(overrides=[f"--{item}" for item in items])
    return {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in keys}


def with_dotted(data: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """A nested config dict (e.g. a checkpoint's) with ``{"section.key": value}`` set, validated like a YAML file."""
    import copy

    merged = copy.deepcopy(data)
    for dotted, value in overrides.items():
        section, _, name = dotted.partition(".")
        merged.setdefault(section, {})[name] = value
    return config_from_dict(merged)


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
