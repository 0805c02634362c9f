"""System tests: ipspool as a systemd service, in a container with a real systemd as PID 1."""
