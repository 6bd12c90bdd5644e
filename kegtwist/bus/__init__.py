"""Kegnet on Redis: the link, the bus service, the bridge to the core."""
