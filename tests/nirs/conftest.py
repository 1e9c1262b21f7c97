import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """Our matrices are small: on this 2-core machine OpenBLAS threads only fight each other
    (and any other test run) and make a 50 ms fit take seconds."""
    with threadpool_limits(limits=1):
        yield
