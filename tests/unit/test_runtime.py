"""runtime: a thread count for a stretch of work, and the caller's count after it."""

import pytest
import torch

from normfree.runtime import num_threads


def test_num_threads_holds_within_its_block_only():
    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), num_threads(1):
        raise KeyError  # also when the work fails
    assert torch.get_num_threads() == before
    with num_threads(None):  # no count: the caller's
        assert torch.get_num_threads() == before
