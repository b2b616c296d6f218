"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: thread-pool overhead dominates and other processes on the machine slow multi-threaded runs
    down many-fold, so every test runs single-threaded; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cnn():
    """The small LeNet with its dense Hessian and Jacobian (``problems.dense_cnn``), computed once per session:
    ``(model, x, y, H, J)``."""
    from problems import dense_cnn
    return dense_cnn()
