"""One owner per run folder: an exclusive `flock` on RUN/.lock, a file naming its holder's PID.

The kernel drops a `flock` when its holder dies, however it dies (kill -9, the OOM killer), so
the lock itself is never stale; what a dead holder leaves is the file with its PID, which the
next owner reports as a takeover. A holder that ends normally removes the file.

Under `normfree train --nproc N` the launcher takes the lock before it starts the processes
and names itself to them (`distributed.LAUNCHER_ENV`). Rank 0 finds the lock taken by that PID
and waits for it in a thread: should the launcher die, rank 0 holds the lock from that moment
until it has stopped (it stops too: its parent-death signal, `distributed.die_with_launcher`).
"""

import fcntl
import os
import threading
from pathlib import Path

from ..errors import FolderInUse
from .distributed import LAUNCHER_ENV
from .logs import say

LOCK_NAME = ".lock"


def _holder(fd):
    """The PID written in the lock file, or None when it is empty or unreadable."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _claim(fd):
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


class RunLock:
    """`acquire()` the run folder `folder` (which must exist); `release()` or leave the `with`
    block to give it up. `log` hears a takeover from a dead holder."""

    def __init__(self, folder, log=say):
        self.folder, self.log = Path(folder), log
        self.fd, self.waiting = None, False

    @property
    def path(self):
        return self.folder / LOCK_NAME

    def acquire(self):
        if self.fd is not None or self.waiting:
            return self
        fd = self._lock_file()
        if fd is None:
            return self  # our launcher holds it for this job
        previous = _holder(fd)
        if previous is not None and previous != os.getpid():
            self.log(f"{self.folder}: took over the lock left by process {previous}, which is "
                     "no longer running")
        _claim(fd)
        self.fd = fd
        return self

    def _lock_file(self):
        """An open, locked descriptor of the lock file; None when our launcher holds it (then
        a thread takes it once the launcher has gone)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if holder is not None and str(holder) == os.environ.get(LAUNCHER_ENV):
                    self.waiting = True
                    threading.Thread(target=self._take_when_free, args=(fd,),
                                     daemon=True).start()
                    return None
                os.close(fd)
                raise FolderInUse(f"{self.folder} is in use by process {holder} (another "
                                  "normfree run): wait for it to end or stop it, or choose "
                                  "another --out-dir") from None
            try:  # a holder ending as we opened the file removed it: lock the new one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _take_when_free(self, fd):
        fcntl.flock(fd, fcntl.LOCK_EX)  # returns once the launcher has gone
        _claim(fd)
        self.fd = fd

    def release(self):
        fd, self.fd = self.fd, None
        if fd is not None:  # a normal end: no file left for the next owner to report
            self.path.unlink(missing_ok=True)
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
