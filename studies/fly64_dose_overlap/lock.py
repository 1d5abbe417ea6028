"""An exclusive lock on a study root, so that two runners never write into one root.

The lock is an advisory `fcntl.flock` on `<root>/.fly64.lock`. The kernel releases it
when the holding process ends, even by SIGKILL, so a killed sweep can be resumed at once.
The file records the holder's process id, host and command for the message a second
runner prints. The new holder deletes the temporary files a killed runner left in the
root, because no other writer can be active while it holds the lock.

NOTE: `flock` is reliable on local file systems. On NFS it is emulated with POSIX record
locks (Linux >= 2.6.12), which most servers honour; on other network file systems two
hosts may both get the lock.
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from fly64.atomic import remove_stale_temporaries
from fly64.errors import InputError

logger = logging.getLogger(__name__)

LOCK_NAME = ".fly64.lock"


@contextlib.contextmanager
def study_lock(root: Path) -> Iterator[Path]:
    """Hold the lock of `root` for the duration of the block; yield the lock file's path.

    Raises:
        InputError: another process holds the lock; the message names its process id and host.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / LOCK_NAME
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock_path)
            raise InputError(
                f"{root}: the study root is locked by process {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (since {holder.get('since', '?')}); wait for that run to finish"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode("utf-8"), 0)

        stale = remove_stale_temporaries(root)
        if stale:
            logger.warning("Removed %d temporary file(s) left by an interrupted run under %s", len(stale), root)
        yield lock_path
    finally:
        os.close(descriptor)


def _read_holder(lock_path: Path) -> dict:
    try:
        return json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
