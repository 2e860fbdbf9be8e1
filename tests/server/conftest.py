"""Fixtures for the server tests; the helpers they use are in serverkit.py."""

from __future__ import annotations

import pytest
from serverkit import MODEL, start_thread_server


@pytest.fixture(scope="session")
def server(tiny_dir, tmp_path_factory):
    """A server without API keys, shared by the tests of one test process."""
    handle, stop = start_thread_server(tmp_path_factory.mktemp("server"), tiny_dir(MODEL))
    yield handle
    stop()
