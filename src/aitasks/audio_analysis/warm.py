"""Preload target of the analysis pool's fork server: importing this module compiles the loudness kernel.

The one module of the package whose import does work, on purpose: :mod:`aitasks.audio_analysis.parallel`
names it in the fork server's preload list, so the numba kernel of the K-weighting filter is compiled
once, before the workers are forked, and every worker (and every replacement of a killed one) starts
with it compiled. Nothing else imports it.
"""

from __future__ import annotations

from aitasks.audio_analysis.features import _k_weighted_kernel

_k_weighted_kernel()
