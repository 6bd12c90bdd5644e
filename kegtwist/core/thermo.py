"""Temperatures: range, rate, and sensors gone silent.

Rules (``docs/pour-rules.md``, "Temperatures"):

* Readings outside ``min_celsius`` .. ``max_celsius`` (-20 .. 80 °C, the
  server's bounds) are dropped and counted.
* At most one recording per sensor per ``record_interval_seconds`` (60 s:
  the server keeps one value per minute).
* A sensor with no accepted reading for ``lost_after_seconds`` (120 s) is
  reported lost, and found again at its next accepted reading.
"""

from __future__ import annotations

from dataclasses import dataclass

from kegtwist.core.config import ThermoSettings
from kegtwist.core.inputs import ThermoReading
from kegtwist.core.model import Effect, Notice, RecordTemperature, SensorState
from kegtwist.core.stats import CoreStats
from kegtwist.core.timers import Timers


@dataclass(slots=True)
class Sensor:
    last_seen_mono: float
    last_recorded_mono: float | None = None
    lost: bool = False


class Thermo:
    def __init__(self, settings: ThermoSettings, stats: CoreStats, timers: Timers) -> None:
        self.settings = settings
        self.stats = stats
        self.timers = timers
        self.sensors: dict[str, Sensor] = {}

    def reading(self, item: ThermoReading, mono: float, wall: float, out: list[Effect]) -> None:
        settings = self.settings
        celsius = item.celsius
        if not settings.min_celsius <= celsius <= settings.max_celsius:
            self.stats.temperatures_dropped += 1
            out.append(
                Notice(
                    "debug",
                    "Dropped {sensor} reading {celsius} °C: out of range",
                    {"sensor": item.sensor_name, "celsius": celsius},
                )
            )
            return
        sensor = self.sensors.get(item.sensor_name)
        if sensor is None:
            sensor = self.sensors[item.sensor_name] = Sensor(mono)
        sensor.last_seen_mono = mono
        if sensor.lost:
            sensor.lost = False
            out.append(SensorState(item.sensor_name, False))
        self.timers.arm("sensor", item.sensor_name, mono + settings.lost_after_seconds)
        last = sensor.last_recorded_mono
        if last is None or mono - last >= settings.record_interval_seconds:
            sensor.last_recorded_mono = mono
            self.stats.temperatures_recorded += 1
            out.append(RecordTemperature(item.sensor_name, celsius, wall))

    def silent_due(self, name: str, when: float, mono: float, out: list[Effect]) -> None:
        sensor = self.sensors.get(name)
        if sensor is not None and not sensor.lost:
            sensor.lost = True
            out.append(SensorState(name, True))
