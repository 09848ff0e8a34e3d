"""The disk's own limits, measured in the same run as the system under test."""

from __future__ import annotations

import os
import time
from pathlib import Path


def durable_sequential_write(directory: Path, total_mb: int = 512, block_mb: int = 4) -> float:
    """MB/s of writing ``total_mb`` then fsync (what `dd bs=4M conv=fsync` measures)."""
    path = directory / "raw-write.bin"
    block = os.urandom(block_mb * 1024 * 1024)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(total_mb // block_mb):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    path.unlink()
    return total_mb / elapsed


def small_file_fsync_rate(directory: Path, count: int = 200, size_kb: int = 300) -> float:
    """Files/s when each small file is written and fsync'd one after another."""
    payload = os.urandom(size_kb * 1024)
    target = directory / "small-files"
    target.mkdir(exist_ok=True)
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(target / f"{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    for i in range(count):
        (target / f"{i}.bin").unlink()
    target.rmdir()
    return count / elapsed
