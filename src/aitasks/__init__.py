"""aitasks: the AI task platform of a music-streaming service.

The core library is pure Python (no ``kfp`` import anywhere under ``aitasks``); components and
pipelines live outside the package and only wire.
"""

__version__ = "0.1.0"
