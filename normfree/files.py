"""Files written atomically (temp file, fsync, rename) and the project's one CSV format."""

import csv
import io
import json
import os
import secrets
import tempfile
from pathlib import Path

from .errors import OutputError


def temp_files(folder):
    """The temporary files `atomic_write` leaves in `folder` when killed mid-write."""
    return sorted(Path(folder).glob(".*.tmp"))


def atomic_write(path, write, before_replace=None):
    """Call `write(binary_file)` on a temp file next to `path`, fsync it, then rename it.

    A crash or a full disk never leaves a half-written file under the real name (a kill leaves
    the temp file: `temp_files`). The file gets the permissions of any new file (0666 minus the
    umask), like files other tools write. The folder must exist. `before_replace()` runs once
    the new file is safely on disk, before it replaces the old one.
    """
    path = Path(path)
    check_writable(path)
    tmp = None
    try:
        # Created 0666 so that the kernel applies the umask: reading the umask means setting it,
        # for every thread of the process. A random name and O_EXCL, as tempfile.mkstemp does.
        name = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        tmp = name  # ours to remove from here on
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}; nothing was replaced "
                              "(the previous file, if any, is kept)") from None
        raise


def check_writable(path, what=None, probe=False):
    """Refuse an output file whose folder does not exist (normfree creates run directories,
    nothing else), and with `probe` one whose folder takes no new file (read-only, full): a
    command that writes only at its end checks first. `what` (e.g. the flag) names the file
    in the message; `path` None: nothing to do."""
    if path is None:
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise OutputError(f"{what + ' ' if what else ''}{path}: the folder {folder} does not "
                          "exist (create it first)")
    if probe:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise OutputError(f"{what + ' ' if what else ''}{path}: cannot write in {folder} "
                              f"({e.strerror or e})") from None


def save_json(path, values):
    atomic_write(path, lambda f: f.write((json.dumps(values, indent=2) + "\n").encode()))


def csv_text(fieldnames, rows):
    """CSV with a header row; None is written as an empty cell."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_csv(path, fieldnames, rows):
    atomic_write(path, lambda f: f.write(csv_text(fieldnames, rows).encode()))


def append_csv_row(path, row):
    """Append one row (a dict) to a CSV file, writing the header first if the file is new."""
    path = Path(path)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_csv(path, numbers=True):
    """Rows as dicts; with `numbers`, every cell as a float (empty or "None": None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not numbers:
        return rows
    return [{k: float(v) if v not in ("", "None") else None for k, v in row.items()}
            for row in rows]
