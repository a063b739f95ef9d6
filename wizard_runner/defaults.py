"""Defaults the command line shows in --help; kept apart so that --help imports nothing heavy."""

from __future__ import annotations

from typing import Final

#: The user scripts run as.
DEFAULT_USER: Final = "www-data"
#: Seconds one script may run (0 on the command line: no limit).
DEFAULT_TIMEOUT: Final = 600.0
#: A wizard body (or a request) larger than this is refused before parsing; a real one is
#: under 2 KiB.
MAX_CONFIG_BYTES: Final = 64 * 1024
#: A stored result (last-run.json, a daemon's answer) larger than this is damaged: a real one,
#: even with 500 leftovers of each script logged, is far below.
MAX_RESULT_BYTES: Final = 64 * 1024 * 1024
#: A waiting `submit` gives up when no daemon has served the spool for this long (seconds):
#: longer than a systemd restart (RestartSec=2s plus the start), so a restart costs no request.
DAEMON_GRACE_SECONDS: Final = 5.0
#: Seconds a process has to end after SIGTERM before SIGKILL.
GRACE: Final = 5.0
#: Bytes of one script's output its log file keeps (the rest: its tail in the result).
DEFAULT_CAP: Final = 16 * 1024 * 1024
