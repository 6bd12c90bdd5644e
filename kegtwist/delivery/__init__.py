"""Drinks to the Kegbot Server: outbox (records, journal), policy, client, delivery, tap sync."""
