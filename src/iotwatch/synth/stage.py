"""The synth stage: generate the synthetic smart home (captures, inventory, ground truth)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iotwatch.context import StageContext
    from iotwatch.synth.config import SynthConfig
    from iotwatch.tracking import StageRun


def run(cfg: SynthConfig, ctx: StageContext, sr: StageRun) -> dict[str, Any]:
    """Synth stage: writes paths.synth_dir and records the generator's metrics."""
    from iotwatch.synth.dataset import generate

    metrics = generate(cfg, ctx.paths.synth_dir, progress=True)
    sr.record(metrics)
    return metrics
