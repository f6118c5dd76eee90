"""``python _frequent_status_checks.py ARGS`` = ``python -m snakemake ARGS``, with the SLURM executor asking for its
jobs' states at least every ``MAX_PAUSE`` seconds.

snakemake-executor-plugin-slurm (2.8.0) pauses 10 s longer after every status check that saw no job finish, up to
180 s; on a real cluster that spares the controller, here it left finished jobs unnoticed for up to a minute, most of
the cluster test's time. Only the pause between two checks is capped: how jobs are submitted, how their states are
queried and what the states mean stay the plugin's own.
"""
from __future__ import annotations

import asyncio

from snakemake_executor_plugin_slurm import Executor

MAX_PAUSE = 2.0  # seconds; the test's --slurm-init-seconds-before-status-checks


async def _sleep(self) -> None:
    await asyncio.sleep(min(self.next_seconds_between_status_checks, MAX_PAUSE))


Executor.sleep = _sleep

if __name__ == "__main__":
    from snakemake.cli import main

    main()
