"""Out-of-distribution validation renderer: reef clips drawn independently of the synthetic generator.

FOR VALIDATION ONLY — never train on its output. The shipped detector learned the look of `train.synth`; this
package draws reefs another way (gradient-noise and Worley textures, branching/lobed/brain/plate coral, Bezier-arm
crown-of-thorns starfish with spine stippling, muted coral blobs, urchins and other starfish as distractors, a
translating/zooming/handheld camera, Beer-Lambert water) so a score on it says something about starfish, not about
our generator. It imports nothing from `train.synth`, and must not: a shared code path would share its look.

    from train.ood import generate_ood
    summary = generate_ood("data/ood", videos=6, frames=150, seed=0)

Frame-level API (tests): `plan_dataset(config)` -> video plans, `build_sequence(config, sequence)` -> assets,
`render_frame(config, plan, assets, frame)` -> FrameRender (image, label map, instances, annotations).
"""

from train.ood.config import RENDERER_VERSION, OodConfig
from train.ood.render import FrameRender, Instance, render_frame
from train.ood.scene import SequenceAssets, SequencePlan, VideoPlan, build_sequence, plan_dataset
from train.ood.writer import PURPOSE, OodSummary, VideoSummary, generate_ood, is_validation_only

__all__ = [
    "PURPOSE",
    "RENDERER_VERSION",
    "FrameRender",
    "Instance",
    "OodConfig",
    "OodSummary",
    "SequenceAssets",
    "SequencePlan",
    "VideoPlan",
    "VideoSummary",
    "build_sequence",
    "generate_ood",
    "is_validation_only",
    "plan_dataset",
    "render_frame",
]
