"""Shared platform services every task family uses; no ``kfp`` import, no import-time side effects.

Modules (import the one you need; heavy libraries such as torch, mlflow and feast are imported
inside functions):

* :mod:`aitasks.platform.feature_store`: the Feast repository (config, definitions, apply,
  materialize, online/offline reads).
* :mod:`aitasks.platform.registry`: the MLflow model registry without pickle, and the one
  promotion policy (:func:`~aitasks.platform.registry.register_and_promote`).
* :mod:`aitasks.platform.files`: atomic local writes (temp beside + fsync + rename + dir fsync).
* :mod:`aitasks.platform.compute`: usable CPUs, default thread count, device choice, thread pinning.
* :mod:`aitasks.platform.weights`: safetensors save/load with canonical headers and checks before load.
"""
