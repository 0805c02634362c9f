"""End-to-end tests: the real daemon started as a process (``ipspool run``) on a temporary spool."""
