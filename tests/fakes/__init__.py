"""Fakes of third-party systems (real servers on loopback, never in-process mocks)."""
