"""Fixtures for the default scenario's testinfra checks: the scenario's Redis, seen from the controller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis


def _ephemeral() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    port = int((_ephemeral() / "redis.port").read_text().strip())
    client = redis.Redis(host="10.0.3.1", port=port, decode_responses=True, socket_timeout=10)
    client.ping()
    return client
