"""Settings of your own, read from ``APP_*`` variables and ``.env`` like the service's.

Declare each as a field; ``python -m app --help`` lists them under the service's, and a bad
value stops the service before it starts, with one line naming the variable and exit status
2, exactly as for ``APP_PORT``. Read them anywhere with ``app_settings(Settings)``. The echo
has none. A service with three::

    import dataclasses

    from servicekit.config import setting, whole_number


    @dataclasses.dataclass(frozen=True)
    class Settings:
        greeting: str = setting("hello", what="The first word of every reply")   # APP_GREETING
        repeat: int = setting(1, what="Replies per request", parse=whole_number(1, 5))
        database_url: str = setting(what="Where the data lives", secret=True)  # required

and in ``app/protocol.py``: ``app_settings(Settings).greeting``. ``setting()`` in
``servicekit/config.py`` says which types are read and how.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
    """The echo's own settings: none."""
