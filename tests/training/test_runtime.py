import platform

import torch

from training.runtime import torch_threads, tune_allocator


def test_tune_allocator_applies_on_glibc_only():
    assert tune_allocator() == (platform.libc_ver()[0] == "glibc")


def test_threads_are_set_inside_and_restored_after():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
