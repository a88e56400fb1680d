"""Fault-injection tests run on the integration fixtures: real daemons, Redis, podman."""

from tests.integration.conftest import audited, cluster, minwiki_image, wiki  # noqa: F401
