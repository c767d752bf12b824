"""Tests of spire_rt.export (a package, so its conftest does not shadow the top-level one)."""
