"""``python -m app``: the key-value store, with its (empty) lifespan and settings."""

import sys

from app import protocol
from app.lifespan import lifespan
from app.settings import Settings
from servicekit.main import main

if __name__ == "__main__":
    sys.exit(main(protocol, lifespan=lifespan, settings=Settings))
