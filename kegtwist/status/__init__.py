"""See the taps: a read-only status page, JSON document, event stream and
Prometheus metrics for a running daemon (see ``docs/status.md``).

* :mod:`kegtwist.status.hub`: the events the page streams, and what they
  leave behind (last temperatures, recent drinks, board changes).
* :mod:`kegtwist.status.feed`: daemon effects and inputs to hub events.
* :mod:`kegtwist.status.document`: the status document, read from the
  running daemon.
* :mod:`kegtwist.status.metrics`: the Prometheus text format.
* :mod:`kegtwist.status.web`: the HTTP service (:mod:`kegtwist.status.endpoint`
  checks the ``--status`` value without importing it).

Nothing here changes the daemon: it reads it, and it is told what happens.
"""
