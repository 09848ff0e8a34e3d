"""Sensor and wearable batches: parse CSV or JSON, then clean, as documented here.

Accepted input (one batch = one upload, one patient, one device):

* CSV with a header. Long form: a time column (``timestamp``, ``time`` or ``t``), ``signal``,
  ``value`` and optionally ``unit``. Wide form: a time column and one column per signal, its
  unit in brackets or parentheses (``temperature [degF]``, ``HR (bpm)``).
* JSON: a list of points ``{"t": ..., "signal": ..., "value": ..., "unit": ...}``, or an
  object with ``points`` (objects, or ``[t, value]`` pairs) and defaults ``signal``/``unit``.

Times are ISO 8601 (with an offset, or in the batch's zone, UTC unless told) or epoch
seconds/milliseconds; all are converted to UTC.

The cleaning, in order (every step is counted in the batch's report):

1. malformed rows are dropped: a missing or unreadable time, a value that is not a finite
   number, an unknown signal, or a unit the signal is not measured in;
2. units are normalised to one per signal (°F -> °C, fraction -> %, µV -> mV; a temperature
   without a unit above 50 is taken as °F) and values rounded to the signal's resolution;
3. readings are sorted by time; for a time given twice the later row wins (duplicates);
4. physiologically impossible values are dropped (range filter, e.g. heart rate 20-250/min,
   SpO2 50-100 %, temperature 30-45 °C, ECG ±10 mV): sensor faults, not patients;
5. spikes are dropped by a Hampel filter (vitals only; not ECG, whose QRS complexes are sharp
   by nature): a reading further than ``max(3 * 1.4826 * MAD, floor)`` from the median of
   the ``2 * 5 + 1`` readings around it is an artefact (the floor, e.g. 10/min for heart
   rate, keeps a flat signal's MAD of 0 from calling every small change a spike);
6. gaps (no reading for more than 3 * the median interval) are counted, never filled in.

The raw input is stored untouched beside the cleaned series, so any of this can be redone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from medshard.errors import InvalidInputError
from medshard.ingest.signals import Signal, converter, signal_named
from medshard.ingest.times import parse_instant

HAMPEL_HALF_WINDOW: Final = 5
HAMPEL_SIGMAS: Final = 3.0
MAD_SCALE: Final = 1.4826  # MAD -> standard deviation for normally distributed noise
GAP_FACTOR: Final = 3.0
_TIME_COLUMNS: Final = ("timestamp", "time", "t", "datetime", "date_time")
_UNIT_IN_NAME: Final = re.compile(r"^(.*?)\s*[\[(]([^\])]+)[\])]\s*$")


@dataclass
class Cleaned:
    """One signal's cleaned readings: UTC epoch milliseconds and values in ``signal.unit``."""

    signal: Signal
    t_ms: np.ndarray
    values: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """A parsed and cleaned batch and its report (what each step removed, and why)."""

    series: list[Cleaned]
    report: dict[str, Any]

    @property
    def kept(self) -> int:
        return sum(len(s.t_ms) for s in self.series)


class _Rows:
    """Readings gathered per signal, and the malformed rows with their reasons."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.rows = 0
        self.malformed: list[str] = []
        self.by_signal: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
        self.converted: dict[str, set[str]] = defaultdict(set)

    def add(self, where: str, t: Any, signal: Any, value: Any, unit: Any) -> None:
        self.rows += 1
        try:
            sig = signal_named(str(signal or ""))
            when = parse_instant(t if isinstance(t, int | float) else str(t or ""), self.tz)
            number = float(value)
            if not math.isfinite(number):
                raise InvalidInputError(f"value {value!r} is not a finite number")
            convert = converter(sig, str(unit) if unit not in (None, "") else None, number)
        except (InvalidInputError, TypeError, ValueError) as exc:
            if len(self.malformed) < 1_000_000:
                self.malformed.append(f"{where}: {exc}")
            return
        converted = convert(number)
        if converted != number:
            self.converted[sig.name].add(str(unit or "unit-less, taken as °F"))
        ms = int(when.timestamp() * 1000)
        self.by_signal[sig.name].append((ms, converted, sig.name))


def _parse_csv(text: str, rows: _Rows, default_signal: str | None) -> None:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise InvalidInputError("the CSV has no header row")
    names = [h.strip().lower() for h in header]
    time_col = next((i for i, n in enumerate(names) if n in _TIME_COLUMNS), None)
    if time_col is None:
        raise InvalidInputError(f"the CSV has no time column (one of {', '.join(_TIME_COLUMNS)})")
    if "value" in names:  # long form
        sig_col = names.index("signal") if "signal" in names else None
        unit_col = names.index("unit") if "unit" in names else None
        val_col = names.index("value")
        for line, rec in enumerate(reader, 2):
            if not rec:
                continue
            cell = _cells(rec)
            signal = cell(sig_col) if sig_col is not None else default_signal
            rows.add(f"line {line}", cell(time_col), signal, cell(val_col), cell(unit_col))
        return
    columns = []
    for i, raw in enumerate(header):
        if i == time_col:
            continue
        match = _UNIT_IN_NAME.match(raw.strip())
        name, unit = (match.group(1), match.group(2)) if match else (raw.strip(), None)
        columns.append((i, name, unit))
    for line, rec in enumerate(reader, 2):
        if not rec:
            continue
        cell = _cells(rec)
        present = [(i, name, unit) for i, name, unit in columns if cell(i) not in (None, "")]
        if not present:  # a wide row need not carry every signal, but one at least
            rows.add(f"line {line}", cell(time_col), columns[0][1] if columns else None, None, None)
        for i, name, unit in present:
            rows.add(f"line {line}", cell(time_col), name, cell(i), unit)


def _cells(rec: list[str]) -> Any:
    def cell(i: int | None) -> str | None:
        return rec[i].strip() if i is not None and i < len(rec) else None

    return cell


def _parse_json(data: Any, rows: _Rows, default_signal: str | None) -> None:
    defaults: dict[str, Any] = {"signal": default_signal}
    points = data
    if isinstance(data, dict):
        defaults = {"signal": data.get("signal", default_signal), "unit": data.get("unit")}
        points = data.get("points")
    if not isinstance(points, list):
        raise InvalidInputError('JSON sensor data is a list of points, or {"points": [...]}')
    for n, point in enumerate(points):
        where = f"point {n}"
        if isinstance(point, list) and len(point) == 2:
            rows.add(where, point[0], defaults["signal"], point[1], defaults.get("unit"))
        elif isinstance(point, dict):
            t = next((point[k] for k in _TIME_COLUMNS if k in point), None)
            rows.add(
                where,
                t,
                point.get("signal", defaults["signal"]),
                point.get("value"),
                point.get("unit", defaults.get("unit")),
            )
        else:
            rows.add(where, None, None, None, None)


def hampel_mask(values: np.ndarray, floor: float) -> np.ndarray:
    """True where a value is a spike by the Hampel filter described in this module."""
    n = len(values)
    if n < 3:
        return np.zeros(n, dtype=bool)
    k = min(HAMPEL_HALF_WINDOW, (n - 1) // 2)
    padded = np.pad(values, k, mode="edge")
    windows = sliding_window_view(padded, 2 * k + 1)
    median = np.median(windows, axis=1)
    mad = np.median(np.abs(windows - median[:, None]), axis=1)
    threshold = np.maximum(HAMPEL_SIGMAS * MAD_SCALE * mad, floor)
    return np.abs(values - median) > threshold


def _clean(signal: Signal, readings: list[tuple[int, float, str]]) -> Cleaned:
    t = np.array([r[0] for r in readings], dtype=np.int64)
    v = np.array([r[1] for r in readings], dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    last = np.append(t[1:] != t[:-1], True)  # the later of equal times wins
    duplicates = int((~last).sum())
    t, v = t[last], v[last]
    v = np.round(v / signal.resolution) * signal.resolution
    plausible = (v >= signal.low) & (v <= signal.high)
    out_of_range = int((~plausible).sum())
    t, v = t[plausible], v[plausible]
    spikes = 0
    if signal.spike_floor is not None:
        spike = hampel_mask(v, signal.spike_floor)
        spikes = int(spike.sum())
        t, v = t[~spike], v[~spike]
    gaps = 0
    if len(t) > 2:
        steps = np.diff(t)
        gaps = int((steps > GAP_FACTOR * np.median(steps)).sum())
    stats = {
        "unit": signal.unit,
        "readings": len(readings),
        "kept": len(t),
        "duplicates": duplicates,
        "out_of_range": out_of_range,
        "spikes": spikes,
        "gaps": gaps,
    }
    return Cleaned(signal, t, v, stats)


def clean_batch(
    data: bytes, media_type: str, *, tz: tzinfo, default_signal: str | None = None
) -> Batch:
    """Parse and clean a batch (``media_type`` as sniffed: CSV text or JSON).

    Raises
    ------
    InvalidInputError
        The batch is not readable at all, or no reading in it survives cleaning.
    """
    rows = _Rows(tz)
    text = data.decode("utf-8-sig", errors="replace")
    if media_type == "application/json":
        _parse_json(json.loads(text), rows, default_signal)
    else:
        _parse_csv(text, rows, default_signal)
    series = [_clean(signal_named(name), got) for name, got in sorted(rows.by_signal.items())]
    for s in series:
        if rows.converted.get(s.signal.name):
            s.stats["converted_from"] = sorted(rows.converted[s.signal.name])
    report = {
        "rows": rows.rows,
        "malformed": len(rows.malformed),
        "malformed_examples": rows.malformed[:20],
        "kept": sum(len(s.t_ms) for s in series),
        "signals": {s.signal.name: s.stats for s in series},
        "filter": {
            "range": {s.signal.name: [s.signal.low, s.signal.high] for s in series},
            "hampel": {"half_window": HAMPEL_HALF_WINDOW, "sigmas": HAMPEL_SIGMAS},
            "gap_factor": GAP_FACTOR,
        },
    }
    batch = Batch([s for s in series if len(s.t_ms)], report)
    if not batch.kept:
        raise InvalidInputError(
            f"no reading survived cleaning ({rows.rows} rows, {len(rows.malformed)} malformed; "
            f"first: {'; '.join(rows.malformed[:3]) or 'none'}); nothing was stored"
        )
    return batch
