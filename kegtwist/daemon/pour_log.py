"""The log lines of pours and drinks: what an owner reads in the journal."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.logger import Logger

from kegtwist.core import PourUpdate, RecordDrink


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def drink_fields(drink: RecordDrink) -> dict[str, object]:
    """A drink's log fields: every line about a drink names it the same way."""
    return {
        "flow_id": drink.flow_id,
        "meter": drink.meter_name,
        "ticks": drink.ticks,
        "volume_ml": drink.volume_ml,
        "user": drink.username or "guest",
        "start": iso(drink.start_wall),
        "end": iso(drink.end_wall),
        "reason": drink.reason,
    }


def log_drink(log: Logger, effect: RecordDrink) -> None:
    log.info(
        "Drink: flow {flow_id} on {meter}: {ticks} ticks, {volume_ml:.1f} mL, "
        "{user}, {start} to {end} ({reason})",
        **drink_fields(effect),
    )


def log_pour(log: Logger, effect: PourUpdate) -> None:
    """One line per pour start and end; progress only at debug level."""
    pour = effect.pour
    if effect.state == "completed":
        log.info(
            "Pour {flow_id} on {meter} ended ({reason}): {ticks} ticks, {volume_ml:.1f} mL{extra}",
            flow_id=pour.flow_id,
            meter=pour.meter_name,
            reason=effect.reason,
            ticks=pour.ticks,
            volume_ml=pour.volume_ml,
            extra=""
            if effect.recorded
            else ", held until its meter has a tap"
            if effect.held
            else ", not recorded (too small)",
        )
    elif pour.ticks == 0 or pour.duration_seconds == 0:
        log.info(
            "Pour {flow_id} on {meter} started ({user})",
            flow_id=pour.flow_id,
            meter=pour.meter_name,
            user=pour.username or "anonymous",
        )
    else:
        log.debug("Pour {flow_id}: {ticks} ticks", flow_id=pour.flow_id, ticks=pour.ticks)
