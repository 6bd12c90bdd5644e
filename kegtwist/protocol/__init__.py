"""Pure wire formats: KBSP v1, the Kegnet event catalogue."""
