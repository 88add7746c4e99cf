"""Pipeline definitions and the compile / check / run / demo command line used by people and CI.

Kubernetes concerns (resources, retries, caching, pod labels, GPU scheduling) live here only.
"""
