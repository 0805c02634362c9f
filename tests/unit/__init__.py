"""Unit tests: ipspool's modules called in-process (a real DNS server on loopback at most), never the daemon."""
