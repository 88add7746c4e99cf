"""Fixtures of the platform tests: the feature snapshot files and the throwaway redis-server of data processing."""

from tests.data_processing.conftest import feature_files, redis_server  # noqa: F401 - fixtures
