"""Tests of spire_rt.bench (a package, so its conftest does not shadow the top-level one)."""
