"""Progress bars that start no thread.

tqdm starts a monitor thread with the first open bar and stops it with the last, so each epoch
and each evaluation, which opens a bar and then starts its data loader, would fork the loader's
workers while that thread is being created or torn down. CPython 3.11 can deadlock such a
child: it waits forever, inside `os.fork`, for the interpreter's thread-list lock that the
other thread held at the moment of the fork (seen as a run hung in validation, its worker
asleep in `PyOS_AfterFork_Child`). The monitor only re-tunes `miniters` for bars that stall,
which these bars do not need.
"""

from tqdm import tqdm


class ProgressBar(tqdm):
    monitor_interval = 0  # no monitor thread (a class setting: tqdm's own bars are untouched)
