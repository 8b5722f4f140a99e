"""Reading the files a person points corral at (a policy, a rules file, a seccomp profile) when they may lie
in a directory that sandboxes write.

Such a file may have been replaced since it was written: by a FIFO, which would hold the CLI for ever before
any `--timeout` applies (open(2) of a FIFO waits for a writer), by a symlink to a terminal or a device, by a
directory, or by a huge file. `read_bounded` opens non-blocking, accepts only a regular file, and reads at
most `limit` bytes (tests/unit/test_policy_file_kinds.py). Its CONTENT is another matter: keep such files
outside the writable roots (docs/security.md).
"""

from __future__ import annotations

import os
import stat


def read_bounded(source: str, limit: int) -> bytes:
    """The bytes of the file `source`: opened O_NONBLOCK, a regular file only, at most `limit` bytes.
    Raises OSError, or ValueError saying what the path is instead ("it is not a regular file (a FIFO,
    socket or device)", "it is a directory", "it is larger than N MiB")."""
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
            )
            msg = f"it is {kind}"
            raise ValueError(msg)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                msg = f"it is larger than {limit // (1 << 20)} MiB"
                raise ValueError(msg)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
