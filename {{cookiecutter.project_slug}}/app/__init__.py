"""{{ cookiecutter.project_name }}: your service. ``protocol.py`` is what it answers.

Everything in this package is yours to edit; what it inherits from the template is in
``servicekit/``, which never imports this package. Start it with ``python -m app``.
"""
