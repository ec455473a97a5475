"""runtime: a thread count, a logger's level and the warnings filters for a stretch of work,
and the caller's after it."""

import logging
import warnings

import pytest
import torch

from normfree.runtime import num_threads, settings_kept


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


def test_settings_kept_gives_back_threads_loggers_and_warnings_filters():
    quieted = logging.getLogger("normfree.tests.quieted")
    quieted.setLevel(logging.INFO)
    before = torch.get_num_threads(), list(warnings.filters)
    with pytest.raises(KeyError), settings_kept(threads=before[0] + 1,
                                                quiet_loggers=[quieted.name]):
        assert torch.get_num_threads() == before[0] + 1 and quieted.level == logging.ERROR
        warnings.filterwarnings("ignore", message="set within the block")
        raise KeyError  # also when the work fails
    assert (torch.get_num_threads(), list(warnings.filters)) == before
    assert quieted.level == logging.INFO
