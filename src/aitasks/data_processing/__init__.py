"""Data processing: events contract, ETL, validation and quarantine, features, Feast apply/materialize, drift.

The Feast repository itself (definitions, apply, materialize, reads) is :mod:`aitasks.platform.feature_store`.
"""
