#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start_local_slurm.sh started, found by their pid files.
#
# Jobs still queued or running are cancelled first, so that no job step outlives slurmd.
# A munged that was already running before the start script (the system's) is left alone;
# --keep-munge leaves ours running too (the start script uses it to restart Slurm alone).
# Installed packages, /etc/slurm/slurm.conf and the state directory are kept.
set -euo pipefail

base="${WFL_LIKE_SLURM_DIR:-/var/lib/wfl_like-slurm}"
keep_munge=0
[ "${1:-}" = "--keep-munge" ] && keep_munge=1

# Send SIGTERM to the process in pid file $1, then SIGKILL if it is still there after 10 s.
stop_pidfile() {
    local pidfile="$1" pid i
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -TERM "$pid" 2>/dev/null; then
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

if [ -s "$base/run/slurmctld.pid" ] && kill -0 "$(cat "$base/run/slurmctld.pid")" 2>/dev/null; then
    scancel --full --quiet --state=PENDING 2>/dev/null || true
    scancel --full --quiet --state=RUNNING 2>/dev/null || true
    scancel --full --quiet --state=SUSPENDED 2>/dev/null || true
fi
stop_pidfile "$base/run/slurmd.pid"
stop_pidfile "$base/run/slurmctld.pid"
[ "$keep_munge" -eq 1 ] || stop_pidfile "$base/munge/munged.pid"
