"""Every pipeline of the platform, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def pipelines() -> dict[str, Callable[..., Any]]:
    from pipelines.audio_analysis import NAME as AUDIO
    from pipelines.audio_analysis import audio_analysis
    from pipelines.content_generation import NAME as CONTENT
    from pipelines.content_generation import content_generation
    from pipelines.data_pipeline import NAME as DATA
    from pipelines.data_pipeline import data_pipeline
    from pipelines.reco_refresh import NAME as REFRESH
    from pipelines.reco_refresh import reco_refresh
    from pipelines.reco_training import NAME as RECO
    from pipelines.reco_training import reco_training
    from pipelines.reco_tuning import NAME as TUNING
    from pipelines.reco_tuning import reco_tuning

    return {
        DATA: data_pipeline,
        RECO: reco_training,
        REFRESH: reco_refresh,
        TUNING: reco_tuning,
        AUDIO: audio_analysis,
        CONTENT: content_generation,
    }
