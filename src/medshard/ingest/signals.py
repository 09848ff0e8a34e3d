"""The vital signs and waveforms the record keeps, their canonical units and plausible ranges.

One table states, per signal: the unit everything is converted to (UCUM), the conversions
from the units devices actually send, the physiological range outside which a reading cannot
be a real measurement of a living patient, and the Hampel filter's floor (the smallest jump
that may be called a spike; None = no spike filter, for waveforms whose sharp QRS complexes
are the signal). Codes are LOINC for vitals and ISO/IEEE 11073 MDC for ECG leads, used by the
FHIR ``Observation`` facade.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from medshard.errors import InvalidInputError

LOINC: Final = "http://loinc.org"
MDC: Final = "urn:oid:2.16.840.1.113883.6.24"


@dataclass(frozen=True)
class Signal:
    name: str
    unit: str  # UCUM, the unit every stored value is in
    low: float
    high: float
    spike_floor: float | None  # Hampel: never call a jump smaller than this a spike
    resolution: float  # stored values are rounded to this (well below device precision)
    system: str
    code: str
    display: str
    #: Units accepted, each with its conversion to ``unit``.
    units: dict[str, Callable[[float], float]] = field(default_factory=dict)


def _same(v: float) -> float:
    return v


_RATE: dict[str, Callable[[float], float]] = {
    u: _same for u in ("/min", "1/min", "bpm", "beats/min", "{beats}/min")
}
_PERCENT = {"%": _same, "percent": _same, "fraction": lambda v: v * 100, "1": lambda v: v * 100}
_CELSIUS = {u: _same for u in ("cel", "c", "°c", "degc", "celsius")}
_FAHRENHEIT = {
    u: (lambda v: (v - 32.0) * 5.0 / 9.0) for u in ("[degf]", "f", "°f", "degf", "fahrenheit")
}
_MILLIVOLT = {
    "mv": _same,
    "uv": lambda v: v / 1000,
    "µv": lambda v: v / 1000,
    "v": lambda v: v * 1000,
}
_LEADS: Final = {
    "i": "131329",
    "ii": "131330",
    "iii": "131389",
    "avr": "131390",
    "avl": "131391",
    "avf": "131392",
    "v1": "131331",
    "v2": "131332",
    "v3": "131333",
    "v4": "131334",
    "v5": "131335",
    "v6": "131336",
}


def _ecg(lead: str) -> Signal:
    return Signal(
        f"ecg_{lead}",
        "mV",
        -10.0,
        10.0,
        None,
        0.001,
        MDC,
        _LEADS[lead],
        f"ECG lead {lead.upper().replace('AV', 'aV')}",
        _MILLIVOLT,
    )


SIGNALS: Final[dict[str, Signal]] = {
    "heart_rate": Signal(
        "heart_rate", "/min", 20, 250, 10.0, 0.1, LOINC, "8867-4", "Heart rate", _RATE
    ),
    "spo2": Signal(
        "spo2",
        "%",
        50,
        100,
        3.0,
        0.1,
        LOINC,
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        _PERCENT,
    ),
    "temperature": Signal(
        "temperature",
        "Cel",
        30,
        45,
        0.5,
        0.01,
        LOINC,
        "8310-5",
        "Body temperature",
        {**_CELSIUS, **_FAHRENHEIT},
    ),
    **{f"ecg_{lead}": _ecg(lead) for lead in _LEADS},
}
_ALIASES: Final = {
    "hr": "heart_rate",
    "heartrate": "heart_rate",
    "pulse": "heart_rate",
    "heart_rate": "heart_rate",
    "spo2": "spo2",
    "oxygen_saturation": "spo2",
    "sao2": "spo2",
    "temp": "temperature",
    "temperature": "temperature",
    "body_temperature": "temperature",
}
#: A temperature sent without a unit and above this is Fahrenheit: no living core is 50 °C.
FAHRENHEIT_GUESS_ABOVE: Final = 50.0


def signal_named(name: str) -> Signal:
    """The signal a column or field name stands for (``HR``, ``SpO2``, ``ECG II``, ...).

    Raises
    ------
    InvalidInputError
        Not a signal this archive keeps.
    """
    key = re.sub(r"[\s\-:]+", "_", name.strip().lower())
    if key in _ALIASES:
        return SIGNALS[_ALIASES[key]]
    lead = re.fullmatch(r"ecg_?(?:lead_?)?(i{1,3}|av[rlf]|v[1-6])", key)
    if lead:
        return SIGNALS[f"ecg_{lead.group(1)}"]
    if key in SIGNALS:
        return SIGNALS[key]
    raise InvalidInputError(
        f"unknown signal {name!r} (known: {', '.join(sorted(_ALIASES))}, ecg_*)"
    )


def converter(signal: Signal, unit: str | None, value: float) -> Callable[[float], float]:
    """The conversion of ``value`` in ``unit`` to the signal's unit.

    Raises
    ------
    InvalidInputError
        A unit this signal is not measured in.
    """
    if not unit:
        if signal.name == "temperature" and value > FAHRENHEIT_GUESS_ABOVE:
            return signal.units["[degf]"]
        if signal.name == "spo2" and 0 < value <= 1.0:  # a fraction, not a percentage
            return signal.units["fraction"]
        return _same
    key = unit.strip().lower()
    if key in signal.units:
        return signal.units[key]
    raise InvalidInputError(f"unit {unit!r} is not a unit of {signal.name}")
