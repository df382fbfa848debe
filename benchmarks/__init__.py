"""
Benchmarks of the gateway against real components (a real sshd, real
OpenSSH clients, a real WebSocket approval service), each figure compared
with direct OpenSSH in the same run.

Run them from the repository root, as root: C{python -m benchmarks}
(L{benchmarks.suite}); see docs/performance.md.
"""
