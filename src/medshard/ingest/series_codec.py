"""Cleaned series as compact Parquet objects, and downsampling for display.

A segment (one signal, one UTC day, one batch) is a two-column Parquet table: ``t``
(timestamp in ms, UTC) and ``v`` (float32, already rounded to the signal's resolution).
Times are delta-encoded (a regular 1 Hz series costs almost nothing) and values are
byte-stream-split then zstd-compressed, which suits slowly varying measurements: a day of
1 Hz heart rate is a few tens of kilobytes.

Display never needs 86 400 points per day: :func:`lttb` (Largest-Triangle-Three-Buckets,
Steinarsson 2013) keeps the points that preserve the curve's visual shape, and
:func:`minmax` keeps each time bucket's extremes (so no spike of a waveform is hidden).
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medshard.errors import InvalidInputError

PARQUET: Final = "application/vnd.apache.parquet"
DAY_MS: Final = 86_400_000


def encode(t_ms: np.ndarray, values: np.ndarray) -> bytes:
    """One segment as Parquet bytes."""
    table = pa.table(
        {
            "t": pa.array(t_ms.astype(np.int64), pa.timestamp("ms", tz="UTC")),
            "v": pa.array(values.astype(np.float32)),
        }
    )
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression="zstd",
        compression_level=9,
        use_dictionary=False,
        column_encoding={"t": "DELTA_BINARY_PACKED", "v": "BYTE_STREAM_SPLIT"},
        write_statistics=False,
    )
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(UTC epoch ms, values as float64) of a segment."""
    table = pq.read_table(io.BytesIO(data))
    t = table.column("t").cast(pa.int64()).to_numpy()
    v = table.column("v").to_numpy().astype(np.float64)
    return t, v


def by_day(t_ms: np.ndarray) -> list[tuple[int, slice]]:
    """(UTC day number, slice) runs of a time-sorted series: one object per day."""
    days = t_ms // DAY_MS
    edges = np.flatnonzero(np.diff(days)) + 1
    starts = [0, *edges.tolist()]
    ends = [*edges.tolist(), len(t_ms)]
    return [(int(days[s]), slice(s, e)) for s, e in zip(starts, ends, strict=True)]


def lttb(t: np.ndarray, v: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest-Triangle-Three-Buckets down to ``n_out`` points (first and last kept)."""
    n = len(t)
    if n_out >= n or n_out < 3:
        return t, v
    x = t.astype(np.float64)
    edges = np.linspace(1, n - 1, n_out - 1).astype(np.int64)  # n_out - 2 inner buckets
    keep = [0]
    for i in range(n_out - 2):
        lo, hi = edges[i], edges[i + 1]
        nxt_lo, nxt_hi = edges[i + 1], (edges[i + 2] if i + 2 < len(edges) else n)
        avg_x = x[nxt_lo:nxt_hi].mean() if nxt_hi > nxt_lo else x[-1]
        avg_y = v[nxt_lo:nxt_hi].mean() if nxt_hi > nxt_lo else v[-1]
        a = keep[-1]
        area = np.abs((x[a] - avg_x) * (v[lo:hi] - v[a]) - (x[a] - x[lo:hi]) * (avg_y - v[a]))
        keep.append(lo + int(np.argmax(area)) if hi > lo else lo)
    keep.append(n - 1)
    idx = np.array(keep)
    return t[idx], v[idx]


def minmax(t: np.ndarray, v: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``n_out // 2`` equal time buckets reduced to its minimum and maximum."""
    if n_out >= len(t) or n_out < 2:
        return t, v
    buckets = n_out // 2
    span = int(t[-1] - t[0]) + 1
    which = ((t - t[0]) * buckets // span).astype(np.int64)
    edges = np.flatnonzero(np.diff(which)) + 1
    keep: list[int] = []
    for s, e in zip([0, *edges.tolist()], [*edges.tolist(), len(t)], strict=True):
        lo, hi = s + int(np.argmin(v[s:e])), s + int(np.argmax(v[s:e]))
        keep.extend(sorted({lo, hi}))
    idx = np.array(keep)
    return t[idx], v[idx]


def downsample(
    t: np.ndarray, v: np.ndarray, mode: str, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """``mode`` is lttb, minmax or none (every point)."""
    if mode == "none":
        return t, v
    if mode == "lttb":
        return lttb(t, v, max_points)
    if mode == "minmax":
        return minmax(t, v, max_points)
    raise InvalidInputError(f"downsample must be lttb, minmax or none, not {mode!r}")
