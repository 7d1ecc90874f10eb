"""Atomic writes: a reader sees the old output or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import MessiError


def _default_mode(directory: bool) -> int:
    """Permissions a plain open()/mkdir() would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(False))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Tidy the temporary and ``.old`` siblings of ``path`` left by messi processes that died
    (kill -9, power loss); those of live processes are left alone. A ``.old`` copy whose process
    died between moving ``path`` aside and renaming the new one in, while ``path`` is still
    missing, is the only copy: it is put back as ``path``, not deleted. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    # only names messi makes: .NAME.old-PID and .NAME.PID.<random>.tmp
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:old-(\d+)|(\d+)\.[^.]+\.tmp)$")
    for entry in sorted(path.parent.iterdir()):
        m = pattern.match(entry.name)
        pid = int(m.group(1) or m.group(2)) if m else None
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if m.group(1) and not (path.exists() or path.is_symlink()):
            os.rename(entry, path)  # the kill fell between the two renames: the old output comes back
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def check_writable_target(path: str | os.PathLike, replace: bool = False, is_ours=None) -> Path:
    """Check, before any work, that the folder ``path`` can be written: its parent can be
    created and written to, and ``path`` does not exist (or, with ``replace``, is a folder that
    ``is_ours(path)`` says messi wrote). MessiError naming the problem and the fix otherwise.
    A copy of ``path`` that a killed run had moved aside is put back first (``clean_stale``)."""
    path = Path(path)
    clean_stale(path)
    _check_name_length(path)
    if path.exists() or path.is_symlink():
        if not replace:
            raise MessiError(f"{path} already exists; choose another folder or pass --overwrite")
        if not path.is_dir() or path.is_symlink():
            raise MessiError(f"{path} is not a folder; --overwrite only replaces a folder that messi wrote")
        _refuse_precious(path)
        if is_ours is not None and not is_ours(path):
            raise MessiError(f"{path} was not written by messi (no messi.json); --overwrite refuses to delete "
                             "it. Choose another folder")
    _ensure_writable_folder(path.parent, path)
    return path


def _nearest_folder(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists as a folder (where a file system can be asked)."""
    return next((p for p in [path, *path.parents] if p.is_dir()), Path("."))


def _check_name_length(path: Path) -> None:
    """MessiError, before any work, if ``path``'s name or the temporary names made beside it
    (``.NAME.PID.random.tmp``, ``.NAME.old-PID``) would be too long for its file system."""
    try:
        limit = os.pathconf(_nearest_folder(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = len(os.fsencode(path.name)) + _TEMP_NAME_EXTRA
    if longest > limit:
        raise MessiError(f"the name {path.name[:40]}... ({len(os.fsencode(path.name))} bytes) is too long: messi "
                         f"writes it under a temporary name {_TEMP_NAME_EXTRA} bytes longer, and this file system "
                         f"allows {limit}. Choose a name of at most {limit - _TEMP_NAME_EXTRA} bytes")


#: How much longer than NAME the temporary names are: "." + NAME + "." + pid (up to 10 digits)
#: + "." + mkstemp's 8 random characters + ".tmp".
_TEMP_NAME_EXTRA = 1 + 1 + 10 + 1 + 8 + 4


def check_free_space(folder: str | os.PathLike, nbytes: int, what: str) -> None:
    """MessiError, before any work, if writing ``nbytes`` under ``folder`` cannot succeed: less
    free space than that on its file system, or a file-size limit (``ulimit -f``) below it."""
    import resource

    folder = _nearest_folder(Path(folder))
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise MessiError(f"{what} needs about {nbytes / 1e6:,.0f} MB but {folder} has {free / 1e6:,.0f} MB free; "
                         "free some space or choose another folder")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < nbytes:
        raise MessiError(f"{what} writes a file of up to {nbytes / 1e6:,.0f} MB but the file-size limit (ulimit -f) "
                         f"is {limit / 1e6:,.1f} MB; raise it (ulimit -f unlimited) or write less")


def _refuse_precious(path: Path) -> None:
    """MessiError if replacing ``path`` could take what a user lives in with it: the home folder,
    a filesystem root, the current folder or one of its parents."""
    real, cwd = path.resolve(), Path.cwd().resolve()
    if real == Path.home().resolve():
        raise MessiError(f"{path} is your home folder; --overwrite never replaces it. Choose another folder")
    if real == Path(real.anchor):
        raise MessiError(f"{path} is a filesystem root; --overwrite never replaces it. Choose another folder")
    if real == cwd or real in cwd.parents:
        raise MessiError(f"{path} is the current folder or one of its parents; --overwrite never replaces it. "
                         "Choose another folder")


def _ensure_writable_folder(folder: Path, target: Path) -> None:
    """Create ``folder`` (for ``target``) and prove it writable with a probe file, or MessiError:
    a file where a folder should be, or no permission."""
    for p in [folder, *folder.parents]:
        if p.exists():
            if not p.is_dir():
                raise MessiError(f"cannot create {target}: {p} is a file, not a folder; choose another output path")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise MessiError(f"cannot write to {folder} ({e.strerror}); choose a folder you can write to") from e


def check_output_folder(path: str | os.PathLike) -> Path:
    """A folder that results are added to (created if missing): MessiError, before any work,
    if it is a file, sits under a file, or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MessiError(f"{path} is a file, not a folder; choose another --output-dir")
    _ensure_writable_folder(path, path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True):
    """Yield a temporary folder beside ``path``; on success it becomes ``path`` in one rename.

    On any failure (Ctrl-C included) the temporary folder is removed and ``path``, if it
    existed, is left as it was. With ``replace=False`` a ``path`` that appeared while the work
    ran is never replaced: MessiError, and what is there stays intact. Leftovers of earlier
    runs that were killed are cleaned first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _default_mode(True))
    try:
        yield tmp
        for f in tmp.rglob("*"):  # libraries may write 0600; give every file the umask's mode
            if f.is_file() and not f.is_symlink():
                os.chmod(f, _default_mode(False))
        if path.exists() or path.is_symlink():
            if not replace:
                raise MessiError(f"{path} appeared while this run worked; it was left as it is and nothing "
                                 "was written. Choose another folder or pass --overwrite")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            try:
                os.rename(tmp, path)
            except OSError as e:  # a non-empty folder appeared between the check and the rename
                raise MessiError(f"{path} appeared while this run worked ({e.strerror}); it was left as it is") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_png(fig, path: str | os.PathLike) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
