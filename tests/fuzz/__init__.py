"""Fuzzing the gateway's SSH transport (see docs/security.md)."""
