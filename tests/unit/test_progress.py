"""Progress bars start no monitor thread, so no thread is being created or torn down when a
data loader forks its workers (normfree/progress.py)."""

import threading

from tqdm import tqdm

from normfree.progress import ProgressBar


def test_bars_start_no_thread_and_leave_tqdms_own_setting_alone():
    before = set(threading.enumerate())
    for _ in range(3):
        with ProgressBar(range(5), disable=False, mininterval=0) as bar:
            assert set(threading.enumerate()) == before
            list(bar)
    assert tqdm.monitor_interval == 10  # tqdm's default: its own bars still have a monitor
