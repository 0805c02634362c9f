"""The parts of ipspool that depend on the Python release, run under each supported one."""
