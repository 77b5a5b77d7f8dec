"""Fixtures of the batch tests: a cohort on disk and a two-worker Dask cluster."""

from __future__ import annotations

from pathlib import Path

import distributed
import pytest
from tests.batch.cohort import Cohort, make_cohort


@pytest.fixture
def cohort(tmp_path: Path) -> Cohort:
    return make_cohort(tmp_path / "cohort")


@pytest.fixture(scope="session")
def dask_client():
    """A Dask LocalCluster with two workers as threads of this process (quick to start), one thread each."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0", silence_logs=40
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
