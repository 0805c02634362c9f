"""Exit codes: a contract with systemd units, scripts and docs/exit-codes.md.

Past the generic 0, 1 and 2 the codes are the sysexits(3) ones, which systemd
names by their meaning in its logs (``status=78/CONFIG``); they stay clear of
3..7, which systemd reads as LSB init-script codes (4 is "NOPERMISSION").
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1             # submit --wait: a file failed; reload/status: gave up waiting
    USAGE = 2               # bad command line (argparse's own code)
    RELOAD_REJECTED = 65    # EX_DATAERR: reload: the daemon refused the new configuration
    NOT_RUNNING = 69        # EX_UNAVAILABLE: status/reload: no daemon answers for this configuration
    INTERNAL_ERROR = 70     # EX_SOFTWARE: an uncaught exception (logged first as one critical event)
    WORKER_BOOT_ERROR = 71  # EX_OSERR: workers cannot start; the daemon halts instead of fork-looping
    SPOOL_ERROR = 73        # EX_CANTCREAT: the spool or results directory is missing or unusable
    TIMED_OUT = 75          # EX_TEMPFAIL: process: no chunk made progress for workers.heartbeat_timeout
    CONFIG_ERROR = 78       # EX_CONFIG: the configuration is invalid or a stage cannot be loaded
