"""Synthetic smart-home traffic: real pcap captures of four IoT devices plus Mirai-style attacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iotwatch.synth.config import SynthConfig
    from iotwatch.synth.dataset import generate

__all__ = ["SynthConfig", "generate"]


def __getattr__(name: str) -> Any:
    # lazy: importing the package must not import numpy/sklearn
    if name == "generate":
        from iotwatch.synth.dataset import generate

        return generate
    if name == "SynthConfig":
        from iotwatch.synth.config import SynthConfig

        return SynthConfig
    raise AttributeError(name)
