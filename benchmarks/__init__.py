"""
Benchmarks of the gateway against real components (a real sshd, a real
WebSocket approval service, a real SSH client library).

Run them from the repository root, e.g. C{python -m benchmarks.approval}.
"""
