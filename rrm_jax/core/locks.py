"""An exclusive lock file per output, so two processes never write one records file or one run directory."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path, busy: Exception):
    """Hold an exclusive ``flock`` on ``path`` for the block; raise ``busy`` at once if another process holds it.

    The kernel drops the lock when its holder dies, so a killed run never leaves its output locked (the file may
    stay behind; it is removed on a clean exit). Non-POSIX systems: no locking."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise busy from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(f, fcntl.LOCK_UN)
