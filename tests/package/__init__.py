"""Tests of the installed Debian package (see conftest.py)."""
