"""Tests of spire_rt.backends (a package, so its conftest does not shadow the top-level one)."""
