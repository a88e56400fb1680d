"""Fault-injection tests reuse the integration fixtures: a running one-node cluster and
the sample module installed on it."""

from tests.integration.conftest import cluster, minwiki_image, wiki

__all__ = ["cluster", "minwiki_image", "wiki"]
