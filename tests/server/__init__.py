"""Real-server tests (package so its conftest does not shadow tests/conftest.py as module `conftest`)."""
