"""The agent's commands.

Commands::

    python3 edgepipe_agent.pyz run -        read a job (JSON) on stdin, print a result (JSON) on stdout
    python3 edgepipe_agent.pyz probe        print the board's state and the runtimes it has (JSON)
    python3 edgepipe_agent.pyz version      print the agent version and the protocols it speaks

Environment: ``EDGEPIPE_AGENT_LAUNCHER`` (a JSON list) prefixes the command that starts the sandboxed child,
for emulators the kernel cannot start by itself; ``EDGEPIPE_EMULATED=1`` marks the board state as emulated.

While it works, ``run`` writes progress events to stderr, one JSON object per line, such as
``{"event": "phase", "phase": "warmup", "runs": 10}``. Lines that are not JSON are the runtime's own log.

Model errors (everything but BadJob and AgentFailure) are results, not agent failures: ``run`` prints the result
and exits 0. It exits 2 only when it could not even read the job, after printing a BadJob result.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from edgepipe_agent.board import board_state, probe
from edgepipe_agent.protocol import AGENT_VERSION, JOB_PROTOCOL, RESULT_PROTOCOL, JobFailed, check_job
from edgepipe_agent.sandbox import sandbox_main
from edgepipe_agent.supervisor import supervise, terminate


def run(raw_job: str) -> tuple[dict[str, Any], int]:
    base: dict[str, Any] = {"protocol": RESULT_PROTOCOL, "agent_version": AGENT_VERSION}
    try:
        job = check_job(raw_job)
    except JobFailed as exc:
        return {**base, "status": "error", "error": {"class": exc.error_class, "message": exc.message}}, 2
    base["board"] = board_state()
    started = time.time()
    measured = supervise(job)
    # The board's wall clock around the job: a device farm checks that two jobs never overlapped on one board.
    return {**base, **measured, "clock": {"started": started, "finished": time.time()}}, 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "help"
    if command == "_sandbox":
        return sandbox_main()
    if command == "version":
        print(json.dumps({"agent_version": AGENT_VERSION, "job": JOB_PROTOCOL, "result": RESULT_PROTOCOL}))
        return 0
    if command == "probe":
        print(json.dumps(probe(argv[2] if len(argv) > 2 else os.getcwd())))
        return 0
    if command == "run":
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGHUP, terminate)
        source = argv[2] if len(argv) > 2 else "-"
        raw = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
        result, code = run(raw)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return code
    sys.stderr.write(__doc__ or "")
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
