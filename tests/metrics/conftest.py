"""Shared by the metric tests: they run tiny models op by op."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run op by op; on a shared 2-core machine a second thread only adds contention (5-10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
