"""``python -m app``: run the service with this package's protocol, lifespan and settings.

``servicekit.main`` does the rest (the service's settings, runtime, exit status); ``python -m
app --help`` lists the settings, yours included, and the exit statuses.
"""

import sys

from app import protocol
from app.lifespan import lifespan
from app.settings import Settings
from servicekit.main import main

if __name__ == "__main__":
    sys.exit(main(protocol, lifespan=lifespan, settings=Settings))
