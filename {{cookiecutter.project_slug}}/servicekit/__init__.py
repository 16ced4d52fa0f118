"""What every generated service inherits from the template; the user's code is in ``app/``.

This package never imports ``app``: ``app/__main__.py`` hands it the protocol. Nothing here
needs editing to make the service yours, and ``cruft update`` brings its new versions in.
The runtime is ``servicekit/aiorun.py``, a drop-in for aiorun:
``from servicekit.aiorun import run, shutdown_waits_for``.
"""
