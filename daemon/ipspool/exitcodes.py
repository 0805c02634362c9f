"""Exit codes: a contract with systemd units, scripts and docs/exit-codes.md."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1            # submit --wait: a file failed; reload/status: gave up waiting
    USAGE = 2              # bad command line (argparse's own code)
    WORKER_BOOT_ERROR = 3  # workers cannot start; the daemon halts instead of fork-looping
    CONFIG_ERROR = 4       # the configuration is invalid or a stage cannot be loaded
    SPOOL_ERROR = 5        # the spool or results directory is missing or unusable
    NOT_RUNNING = 6        # status/reload: no daemon answers for this configuration
    RELOAD_REJECTED = 7    # reload: the daemon refused the new configuration
