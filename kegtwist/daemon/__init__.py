"""Options, settings, logging, composition of the roles, the manhole."""
