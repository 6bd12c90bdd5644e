"""Kegboards: specs, naming, the serial/TCP link and service, the simulator."""
