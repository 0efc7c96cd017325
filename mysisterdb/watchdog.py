"""`mysisterdb watchdog`: the runbook's monitor_and_restart, for deployments outside compose.

Polls the health URL; after `failures` consecutive failures (no answer within the timeout,
or a non-200) it runs the restart command once, then waits for the service to come back.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

RESTART_COMMAND_TIMEOUT_S = 120.0


@dataclass
class Watchdog:
    url: str
    restart_command: str | None
    failures: int = 3
    interval_s: float = 10.0
    timeout_s: float = 5.0
    consecutive: int = 0
    restarts: int = 0

    def healthy(self) -> bool:
        try:
            response = httpx.get(self.url, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            logger.warning("health check failed: %s", exc)
            return False
        if response.status_code != 200:
            logger.warning("health check answered %s: %s", response.status_code,
                           response.text[:300])
        return response.status_code == 200

    def check_once(self) -> None:
        if self.healthy():
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.restart()
            self.consecutive = 0

    def restart(self) -> None:
        self.restarts += 1
        if not self.restart_command:
            logger.error("%d consecutive health failures; no --restart-command given",
                         self.consecutive)
            return
        logger.error("%d consecutive health failures; running restart command",
                     self.consecutive)
        try:
            done = subprocess.run(self.restart_command, shell=True,
                                  timeout=RESTART_COMMAND_TIMEOUT_S, check=False)
            logger.info("restart command exited with %s", done.returncode)
        except subprocess.TimeoutExpired:
            logger.error("restart command did not finish in %.0f s", RESTART_COMMAND_TIMEOUT_S)

    def run(self, *, max_checks: int | None = None) -> None:
        logger.info("watchdog polling %s every %.1f s", self.url, self.interval_s)
        checks = 0
        while max_checks is None or checks < max_checks:
            self.check_once()
            checks += 1
            time.sleep(self.interval_s)
