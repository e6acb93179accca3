"""`mlb.common.device.resolve_device`: auto, explicit devices, and early errors that name the value."""

from __future__ import annotations

import pytest
import torch

import mlb.train.trainer
from mlb.common.device import resolve_device

pytestmark = pytest.mark.unit


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):  # torch.device() needs no GPU: only the availability check is faked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_is_cuda_when_available_else_cpu(no_cuda):
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_with_cuda(with_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_explicit_devices_are_torch_devices(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert isinstance(resolve_device("cpu"), torch.device)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_value_error(no_cuda, name):
    with pytest.raises(ValueError, match="CUDA is not available") as err:
        resolve_device(name)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["gpu", "", "cuda:x", "cpu:-1"])
def test_names_torch_rejects_are_value_errors_naming_the_value(name):
    with pytest.raises(ValueError) as err:
        resolve_device(name)
    assert f"device={name!r}" in str(err.value)


def test_the_trainer_uses_it():
    assert mlb.train.trainer.resolve_device is resolve_device
