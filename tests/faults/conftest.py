"""Fault-injection tests run on the integration fixtures: real daemons, Redis, podman."""

from tests.integration.conftest import audited, cluster, minwiki_image, wiki  # noqa: F401
from tests.integration.test_restore_cases import hooked_image  # noqa: F401
