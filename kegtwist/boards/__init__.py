"""Kegboards: specs, naming, the session state machine, the serial/TCP link,
the service, the simulator."""
