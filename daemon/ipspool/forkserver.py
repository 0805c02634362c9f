"""Preloaded into the multiprocessing forkserver (set_forkserver_preload).

Importing this module is meant to happen only there. The forkserver is the
parent of every worker and of the Manager; if a signal sent to the whole
process group (Ctrl-C, ``kill -TERM -PGID``, ``timeout``) killed it, the
supervisor would lose track of live workers. So it ignores the signals the
supervisor handles; each child sets its own dispositions after the fork.
"""

from __future__ import annotations

import signal

import ipspool.worker  # noqa: F401 - imported once here, shared by every fork

for _signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(_signum, signal.SIG_IGN)
