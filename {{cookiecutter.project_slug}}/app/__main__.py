"""``python -m app``: run the service with this package's protocol.

``servicekit.main`` does the rest (settings, runtime, exit status); ``python -m app --help``
lists the settings and exit statuses.
"""

import sys

from app import protocol
from servicekit.main import main

if __name__ == "__main__":
    sys.exit(main(protocol))
