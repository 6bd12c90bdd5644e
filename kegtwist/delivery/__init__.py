"""Drinks to the Kegbot Server: outbox, client, delivery, tap sync."""
