import os

import pytest

from harness import Cluster


@pytest.fixture(scope="session")
def bin_dir():
    path = os.environ.get("PARLEY_BIN_DIR")
    assert path, "PARLEY_BIN_DIR must name the folder with the built executables (make test sets it)"
    return path


@pytest.fixture(scope="session")
def admin_url():
    url = os.environ.get("PARLEY_TEST_ADMIN_URL")
    assert url, "PARLEY_TEST_ADMIN_URL must name the test PostgreSQL server (make test sets it)"
    return url


@pytest.fixture(scope="module")
def cluster(bin_dir, admin_url, request):
    cluster = Cluster(bin_dir, admin_url)
    yield cluster
    failed = getattr(request.node, "failed_tests", 0)
    cluster.stop()
    if failed:
        print(cluster.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        module = item.module
        setattr(module, "_failed", True)
        parent = item.parent
        parent.failed_tests = getattr(parent, "failed_tests", 0) + 1
