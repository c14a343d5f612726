"""The shared file plumbing (mamllib.data.store): folders from the environment,
atomic writes with open()'s permissions, a clear error on a full disk, stale temporary
files of killed writers removed; who imports whom; the loud skip of data tests."""

import errno
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import DATA_SKIPPED, REPO_ROOT, data_root

from mamllib import runs
from mamllib.data import store


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def dead_pid() -> int:
    """The PID of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------


def test_cache_dir_argument_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv(store.CACHE_ENV, str(tmp_path / "env"))
    assert store.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert store.cache_dir() == tmp_path / "env"
    monkeypatch.delenv(store.CACHE_ENV)
    assert store.cache_dir() == Path.home() / ".cache" / "mamllib"


def test_file_digest_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 << 20))
    for algorithm in ("sha256", "md5"):
        expected = hashlib.new(algorithm, path.read_bytes()).hexdigest()
        assert store.file_digest(path, algorithm) == expected
    assert runs.sha256(path) == store.file_digest(path)


# ------------------------------------------------------------------------------------
# Atomic writes: permissions, full disk, stale temporary files
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_permissions_open_gives(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain", "w") as f:
        f.write("{}")
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~mask
    written = [
        store.atomic_write_bytes(tmp_path / "bytes", b"data"),
        store.write_json(tmp_path / "a.json", {"a": 1}),
        store.save_torch(tmp_path / "a.pt", {"w": torch.zeros(2)}),
        runs.write_json(tmp_path / "results.json", {"a": 1}),
        runs.save_torch(tmp_path / "checkpoint.pt", {"w": torch.zeros(2)}),
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert store.default_file_mode() == expected


def test_runs_writes_through_the_store():
    assert runs.atomic_write_bytes is store.atomic_write_bytes


def test_atomic_write_replaces_whole_and_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    store.atomic_write_bytes(path, b"old content, longer")
    store.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert files(path.parent) == ["f.bin"]


def full_disk(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_names_the_file_the_bytes_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "cache.bin"
    store.atomic_write_bytes(path, b"previous")
    monkeypatch.setattr(store.os, "posix_fallocate", full_disk, raising=False)
    with pytest.raises(store.OutOfSpaceError) as error:
        store.atomic_write_bytes(path, b"x" * 5000)
    message = str(error.value)
    assert str(path) in message and "5,000 bytes needed" in message
    assert "free space" in message and store.CACHE_ENV in message
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    assert files(tmp_path) == ["cache.bin"]  # no temporary file left
    assert path.read_bytes() == b"previous"  # the old file is untouched


def test_full_disk_on_a_checkpoint_points_at_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(store.os, "posix_fallocate", full_disk, raising=False)
    path = tmp_path / "checkpoint-maml.pt"
    with pytest.raises(store.OutOfSpaceError, match="MAMLLIB_RESULTS") as error:
        runs.save_torch(path, {"w": torch.zeros(1000)})
    assert str(path) in str(error.value)
    assert files(tmp_path) == []


def test_full_disk_during_the_write_itself_is_the_same_error(tmp_path, monkeypatch):
    """Where space cannot be reserved, the write's own ENOSPC gets the same message."""

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullFile(f) if "+" in mode else f

    monkeypatch.setattr(store.os, "posix_fallocate", unsupported, raising=False)
    monkeypatch.setattr(store, "open", fake_open, raising=False)
    path = tmp_path / "f.bin"
    with pytest.raises(store.OutOfSpaceError, match=r"f\.bin: 3 bytes needed"):
        store.atomic_write_bytes(path, b"abc")
    assert files(tmp_path) == []


def test_file_systems_without_preallocation_still_write(tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(store.os, "posix_fallocate", unsupported, raising=False)
    path = store.atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert path.read_bytes() == b"abc"
    monkeypatch.delattr(store.os, "posix_fallocate", raising=False)
    assert store.atomic_write_bytes(path, b"de").read_bytes() == b"de"


def test_temporary_names_carry_the_writer_pid(tmp_path):
    path = tmp_path / "f.npy"
    with store.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".f.npy.{os.getpid()}.")
        assert tmp.name.endswith(".tmp")
        tmp.write_bytes(b"abc")
    assert path.read_bytes() == b"abc" and files(tmp_path) == ["f.npy"]


def test_a_failed_block_leaves_the_target_and_no_temporary_file(tmp_path):
    path = tmp_path / "f.npy"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with store.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and files(tmp_path) == ["f.npy"]


def test_stale_temporary_files_of_gone_writers_are_removed(tmp_path):
    path = tmp_path / "miniimagenet-v1-train.npy"
    gone = dead_pid()
    stale = tmp_path / f".{path.name}.{gone}.k2j4h_9x.tmp"
    running = tmp_path / f".{path.name}.{os.getpid()}.abcdefgh.tmp"
    other_target = tmp_path / f".other.npy.{gone}.abcdefgh.tmp"
    longer_name = tmp_path / f".{path.name}.json.{gone}.abcdefgh.tmp"
    not_ours = tmp_path / f".{path.name}.abcdefgh.part"
    for file in (stale, running, other_target, longer_name, not_ours):
        file.write_bytes(b"x")
    assert store.stale_temp_files(path) == [stale]
    store.atomic_write_bytes(path, b"new")
    assert not stale.exists()
    for file in (running, other_target, longer_name, not_ours):
        assert file.exists(), file


def test_a_killed_writer_leaves_a_file_the_next_write_removes(tmp_path):
    """SIGKILL: no cleanup runs in the writer; the next write of the target does it."""
    path = tmp_path / "checkpoint.pt"
    code = textwrap.dedent(
        f"""
        import time
        from mamllib.data.store import atomic_path
        with atomic_path({str(path)!r}, nbytes=1000) as tmp:
            print(tmp, flush=True)
            time.sleep(120)
        """
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        left = Path(writer.stdout.readline().strip())
        assert left.exists() and left.name.startswith(f".{path.name}.{writer.pid}.")
        assert store.stale_temp_files(path) == []  # the writer is still running
    finally:
        writer.kill()
        writer.wait()
    assert left.exists()
    runs.save_torch(path, {"w": torch.zeros(1)})
    assert files(tmp_path) == ["checkpoint.pt"]


# ------------------------------------------------------------------------------------
# Imports: data modules stand alone
# ------------------------------------------------------------------------------------


def test_data_modules_import_neither_runs_nor_each_other():
    code = (
        "import sys\n"
        "import mamllib.data.{0}\n"
        "print(sorted(m for m in sys.modules if m.startswith('mamllib.')))\n"
    )
    for module, other in (("miniimagenet", "omniglot"), ("omniglot", "miniimagenet")):
        out = subprocess.run(
            [sys.executable, "-c", code.format(module)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "mamllib.runs" not in out and f"mamllib.data.{other}" not in out, out
        assert "mamllib.maml" not in out and "mamllib.train" not in out, out


# ------------------------------------------------------------------------------------
# Data tests: where they look, and a loud skip when the data is not there
# ------------------------------------------------------------------------------------


def test_data_folder_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, how = data_root({})
    assert root == REPO_ROOT.parent / "shared" / "data" and "unset" in how
    root, how = data_root({"MAMLLIB_DATA": "rel/data"})
    assert root == tmp_path / "rel" / "data" and "MAMLLIB_DATA=rel/data" in how


def test_missing_data_is_a_loud_skip_naming_where_it_looked(tmp_path):
    """Run from another directory with MAMLLIB_DATA pointing nowhere: the skip
    reason and a line after the results say where the tests looked and what to set."""
    nowhere = tmp_path / "no-data"
    env = {**os.environ, "MAMLLIB_DATA": str(nowhere), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            str(
                REPO_ROOT / "tests" / "test_omniglot.py::test_lanczos_is_really_applied"
            ),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0 and "1 skipped" in out, out + proc.stderr
    assert "data tests skipped" in out, out
    (line,) = [x for x in out.splitlines() if DATA_SKIPPED in x]
    assert str(nowhere) in line and "omniglot/images_background.zip" in line
    assert "Set MAMLLIB_DATA=" in line
