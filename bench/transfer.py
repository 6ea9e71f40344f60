"""Transfer: edgepipe's SSH upload against scp, and what a re-deploy of an unchanged model sends.

    .venv/bin/python bench/transfer.py [--megabytes 50] [--rounds 3]

Both sides talk to the same real sshd on 127.0.0.1 (started here with fresh keys), upload the same file of
random bytes (incompressible), and alternate round by round. edgepipe's figure is its content-addressed upload
as a deploy does it: SFTP to a temporary name, sha256 checked on the board, rename. On loopback both ends share
this machine's 2 cores, so the ratio is the meaningful number, not the MB/s.

Then the digits model is deployed twice to the same board: bytes sent (payload, and encrypted bytes counted at
the socket) for the first and the second deploy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from edgepipe.deployment.cache import RemoteCache
    from edgepipe.provenance import sha256_file
    from edgepipe.targets import load_target
    from edgepipe.transport.loopback import LoopbackSshd
    from edgepipe.transport.ssh import SshTransport

    with tempfile.TemporaryDirectory(prefix="edgepipe-transfer-") as scratch_name:
        scratch = Path(scratch_name)
        payload = scratch / "payload.bin"
        size = args.megabytes * 1_000_000
        with payload.open("wb") as handle:
            handle.write(os.urandom(size))
        sha = sha256_file(payload)
        with LoopbackSshd(scratch / "sshd") as host:
            env = {
                "EDGEPIPE_LOOPBACK_PORT": str(host.port),
                "EDGEPIPE_LOOPBACK_USER": host.user,
                "EDGEPIPE_LOOPBACK_KEY": str(host.key),
                "EDGEPIPE_LOOPBACK_KNOWN_HOSTS": str(host.known_hosts),
                "EDGEPIPE_LOOPBACK_PYTHON": sys.executable,
                "EDGEPIPE_LOOPBACK_WORKDIR": str(scratch / "board"),
            }
            os.environ.update(env)
            target = load_target("loopback")
            scp = [
                "scp", "-q", "-i", str(host.key), "-P", str(host.port),
                "-o", f"UserKnownHostsFile={host.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes",
            ]  # fmt: skip
            print(f"upload of {args.megabytes} MB (random bytes) to sshd on 127.0.0.1, {args.rounds} rounds")
            print(f"{'round':>5} {'scp MB/s':>10} {'edgepipe MB/s':>14} {'ratio':>7}")
            ratios, scp_speeds, ours = [], [], []
            for index in range(args.rounds):
                destination = scratch / "board" / f"scp-{index}.bin"
                destination.parent.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                subprocess.run([*scp, str(payload), f"{host.user}@127.0.0.1:{destination}"], check=True)
                scp_mb_s = size / 1e6 / (time.perf_counter() - started)
                destination.unlink()
                started = time.perf_counter()
                with SshTransport(target) as transport:  # a fresh connection, as scp makes one
                    cache = RemoteCache(transport, target.workdir, sys.executable)
                    placed = cache.ensure(payload, f"{target.workdir}/blobs/bench-{index}-{sha}.bin", sha)
                ours_mb_s = size / 1e6 / (time.perf_counter() - started)
                assert Path(placed).stat().st_size == size
                Path(placed).unlink()
                scp_speeds.append(scp_mb_s)
                ours.append(ours_mb_s)
                ratios.append(ours_mb_s / scp_mb_s)
                print(f"{index + 1:>5} {scp_mb_s:>10.1f} {ours_mb_s:>14.1f} {ours_mb_s / scp_mb_s:>7.2f}")
            print(
                f"median: scp {statistics.median(scp_speeds):.1f} MB/s, edgepipe {statistics.median(ours):.1f} MB/s, "
                f"ratio {statistics.median(ratios):.2f} (acceptance: >= 0.80)"
            )
            redeploy(target)


def redeploy(target: object) -> None:
    from edgepipe.deployment import deploy

    run_dir = ROOT / "runs" / "digits"
    if not (run_dir / "eval.npz").exists():
        print("\nre-deploy: skipped (run scripts/demo first to create runs/digits)")
        return
    print(f"\nre-deploy of {run_dir.relative_to(ROOT)} to the same board:")
    for label in ("first", "second"):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = deploy(target, run_dir=run_dir, out=Path(folder) / "r.json").result  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
        transfer = result["transfer"]
        print(
            f"  {label:<6}: payload {transfer['uploaded_bytes']:>9,} B, "
            f"on the wire {transfer['wire_bytes_sent']:>9,} B, "
            f"sent [{', '.join(transfer['sent'])}], {seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
