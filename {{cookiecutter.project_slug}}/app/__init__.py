"""{{ cookiecutter.project_name }}: an asyncio TCP echo service that stops gracefully.

Start it with ``python -m app``; see README.md for configuration and the shutdown sequence.
"""
