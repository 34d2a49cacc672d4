"""The package's one writer for output files: whole files, replaced atomically, alone or as a set.

Output files (sequence files and id maps now; run files, results and reports as their writers
move here) are never written in place. Each is written to a new temporary file beside its target
(same directory, so the rename stays on one file system), flushed and ``fsync``-ed, and only then
renamed over the target with ``os.replace``. A reader therefore sees the old file or the new one,
never half of one; a crash or a full disk leaves the old file as it was.

* :func:`write_text_atomic` ``(path, text)``: one file;
* :func:`write_files_atomic` ``({path: text, ...})``: a set of files that belong together (a
  sequence file and its id maps): all are written to temporaries first and renamed only once
  every one was written completely, so a failure while writing changes none of the previous
  files. The renames themselves come one after another (POSIX has no multi-file rename), but a
  rename does not fail for want of space.

The temporary files are created with ``O_EXCL`` (``tempfile.mkstemp``): a symlink planted at a
temporary's name is never followed, and a symlink at the target is replaced by the new file, not
written through. On any failure the temporaries are removed. A new file gets the mode a plain
``open(path, "w")`` would give it (``0o666`` less the umask); a replaced file keeps its mode.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from typing import Mapping, Union

__all__ = ["write_files_atomic", "write_text_atomic"]

Content = Union[str, bytes]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _mode_for(target: str) -> int:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return 0o666 & ~_umask()
    if stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()  # a symlink (replaced, not followed) or something else


def _write_temp(target: str, data: bytes) -> str:
    """Write ``data`` to a new temporary file beside ``target``, fsync it; return its path."""
    directory, base = os.path.split(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, _mode_for(target))
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_files_atomic(files: Mapping[str, Content], encoding: str = "utf-8") -> None:
    """Replace each file ``path`` of ``files`` by its content (``str``, encoded, or ``bytes``), as a set.

    Every content is first written to a temporary file beside its target and fsync-ed; only when
    all were written are they renamed over their targets, in the order given. A failure before
    that (``OSError``: full disk, no permission, a target that is a directory) removes the
    temporaries and re-raises, leaving every target as it was. Targets are not followed if they
    are symlinks: the link itself is replaced.
    """
    targets = [os.fspath(p) for p in files]
    if len(set(map(os.path.abspath, targets))) != len(targets):
        raise ValueError(f"write_files_atomic: a target is named twice in {targets}")
    for target in targets:
        if os.path.isdir(target) and not os.path.islink(target):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", target)
    temps: list[tuple[str, str]] = []
    try:
        for target, content in zip(targets, files.values()):
            data = content.encode(encoding) if isinstance(content, str) else bytes(content)
            temps.append((_write_temp(target, data), target))
        while temps:
            tmp, target = temps[0]
            os.replace(tmp, target)
            temps.pop(0)
    except BaseException:
        for tmp, _ in temps:
            _remove(tmp)
        raise
    for directory in {os.path.dirname(os.path.abspath(t)) for t in targets}:
        _fsync_directory(directory)


def write_text_atomic(path: str, text: Content, encoding: str = "utf-8") -> None:
    """Replace the file ``path`` by ``text`` atomically (see :func:`write_files_atomic`)."""
    write_files_atomic({path: text}, encoding)
