"""Package tests: the Debian package built, installed, upgraded and removed on a fresh Debian root."""
