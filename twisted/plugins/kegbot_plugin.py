"""Registers ``twistd kegbot``; the real code loads only when it runs."""

from twisted.application.service import ServiceMaker

kegbot = ServiceMaker(
    "kegbot",
    "kegtwist.daemon.servicemaker",
    "Kegbot core: Kegboards, pours, valves, Kegnet and the Kegbot Server",
    "kegbot",
)
