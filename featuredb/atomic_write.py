"""Write output files whole or not at all: a temp file beside the target, fsync, then one rename.

`atomic_output` hands any writer (json, torch.save, safetensors) the temp path; `write_bytes_atomically` and
`write_json_atomically` build on it. Invariants: the target holds either its old bytes or the new ones; a new
file's mode is what a plain `open(path, "w")` gives (0666 less the umask), a replaced file keeps its mode; the
temp file (`.{name}.tmp-{pid}-{random}`) is removed on any error, Ctrl-C included, and one a SIGKILL left
behind is removed by the next write to the same target once its process is gone. Any OSError (a full disk, a
read-only folder) becomes one FeatureDBError line naming the target, with the target untouched.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from featuredb.errors import FeatureDBError

TEMP_INFIX = ".tmp-"


def temp_name(target: Path) -> str:
    """The temp file name a write to `target` uses: `.{name}.tmp-{pid}-{random}`."""
    return f".{target.name}{TEMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temps of `target` whose writer process is gone (a SIGKILL mid-write); returns what was removed."""
    removed = []
    prefix = f".{target.name}{TEMP_INFIX}"
    for p in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove(p)
            removed.append(p)
    return removed


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A new, empty temp file beside `path` for the caller to fill by any means (json, torch.save, safetensors);
    when the block ends without error it is fsynced and renamed over `path`, else removed. An OSError, in the
    block or here (a full disk, a read-only folder), is a one-line FeatureDBError and leaves `path` untouched."""
    target = Path(os.path.realpath(path))  # through a symlink, as open(path, "w") writes
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        try:
            mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = None  # a new file: 0666 less the umask, which os.open applies
        tmp = target.parent / temp_name(target)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
        _fsync_folder(target.parent)
    except OSError as e:
        raise FeatureDBError(f"{path}: cannot write the output file ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            _remove(tmp)


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename (see atomic_output)."""
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def _remove(tmp: Path) -> None:
    """Delete a temp file; one that cannot be deleted (a read-only folder) stays."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; folders that cannot be opened or synced (some filesystems) are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomically(path: str | Path, data: Any, **dumps: Any) -> None:
    """Write `data` as JSON (compact, no NaN or Infinity: JSON has none) atomically to `path`."""
    try:
        text = json.dumps(data, allow_nan=False, **({"separators": (",", ":")} | dumps))
    except ValueError:
        raise FeatureDBError(f"{path}: not written: the data holds NaN or Infinity, which JSON cannot carry") from None
    write_bytes_atomically(path, text.encode("utf-8"))


def replace_folder(staged: str | Path, target: str | Path) -> None:
    """Put a fully written folder `staged` in place of `target` (a folder cannot be swapped in one rename:
    `target` is removed first, so a crash between leaves no `target` and the caller builds it again)."""
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staged, target)
