#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, for the tests marked `slurm`.
#
# Needs root (it installs Debian's slurm-wlm and munge with apt-get the first time and runs the
# daemons as root). Running it again is harmless: what is installed is not reinstalled, daemons
# that are up are left alone, and it only restarts them when the configuration it writes changed.
# It returns once `sinfo` shows the node idle, or fails with the daemons' last log lines.
#
# State, logs and pid files go to $WFL_LIKE_SLURM_DIR (default /var/lib/wfl_like-slurm); the
# configuration goes to /etc/slurm/slurm.conf, where sbatch, squeue and friends look for it.
# tests/slurm/stop_local_slurm.sh stops what this script started.
set -euo pipefail

base="${WFL_LIKE_SLURM_DIR:-/var/lib/wfl_like-slurm}"
conf=/etc/slurm/slurm.conf
marker="# written by wfl_like tests/slurm/start_local_slurm.sh"
wait_s="${WFL_LIKE_SLURM_WAIT_S:-60}"

die() {
    echo "start_local_slurm.sh: $*" >&2
    exit 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "slurm-wlm and munge are not installed and installing them needs root: rerun as root"
    export DEBIAN_FRONTEND=noninteractive
    # a fresh image may have no package lists yet: update only when the install cannot find the packages
    apt-get install -y -q --no-install-recommends slurm-wlm munge \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; }
}

# Print the configuration for one node named after this host, with the CPUs and memory it has.
write_config() {
    local host cpus mem_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    # leave a tenth of the memory (at least 512 MB) to the system, so slurmd never reports less than configured
    mem_mb="$(awk '/^MemTotal:/ { m = int($2 / 1024); r = int(m * 0.9); if (m - r < 512) r = m - 512; print r }' /proc/meminfo)"
    cat <<EOF
$marker
ClusterName=wfl_like
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool
SlurmctldPidFile=$base/run/slurmctld.pid
SlurmdPidFile=$base/run/slurmd.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no slurmdbd: sacct has nothing to read; finished jobs stay in squeue/scontrol for MinJobAge
# seconds and each one is written to the text job-completion log below
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$base/log/jobcomp.log
# short ticks so that tests do not wait on the scheduler: schedule at submit time without the
# default 3 s batch delay, try pending jobs every second (defaults: main loop 60 s, backfill 30 s;
# an array of 4 trivial jobs takes about 1 s from sbatch to done instead of 6 s), and give killed
# jobs 2 s between SIGTERM and SIGKILL instead of 30 s
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1,sched_min_interval=0
MinJobAge=60
KillWait=2
MessageTimeout=10
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

# True when the process in pid file $1 is alive.
alive() {
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged (ours or the system's) already answers on the default socket
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        # the Debian package creates the key; make one if it was removed
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 "$base/munge"
    runuser -u munge -- munged --pid-file="$base/munge/munged.pid" --log-file="$base/munge/munged.log"
}

# Write the configuration; if it changed, stop the daemons that run with the old one.
update_config() {
    local new
    new="$(write_config)"
    if [ -e "$conf" ] && ! grep -qxF "$marker" "$conf"; then
        die "$conf exists and was not written by this script: move it away to run the local test cluster"
    fi
    if [ -e "$conf" ] && [ "$(cat "$conf")" = "$new" ]; then
        return
    fi
    if alive "$base/run/slurmctld.pid" || alive "$base/run/slurmd.pid"; then
        echo "start_local_slurm.sh: configuration changed: restarting slurmctld and slurmd" >&2
        "$(dirname "$0")/stop_local_slurm.sh" --keep-munge
    fi
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$new" >"$conf"
}

start_slurm() {
    alive "$base/run/slurmctld.pid" || slurmctld
    alive "$base/run/slurmd.pid" || slurmd
}

print_logs() {
    local log
    for log in "$base/log/slurmctld.log" "$base/log/slurmd.log" "$base/munge/munged.log"; do
        [ -e "$log" ] || continue
        echo "--- last lines of $log" >&2
        tail -n 15 "$log" >&2
    done
}

# Wait until the node is idle (or already running jobs: mixed, allocated).
wait_for_node() {
    local deadline state
    deadline=$((SECONDS + wait_s))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle | mixed | allocated | completing) return 0 ;;
        esac
        sleep 0.5
    done
    echo "start_local_slurm.sh: the node is not idle after ${wait_s}s (sinfo says: '${state:-no answer}')" >&2
    print_logs
    exit 1
}

main() {
    install_packages
    [ "$(id -u)" -eq 0 ] || die "the daemons run as root (SlurmUser=root): rerun as root"
    mkdir -p "$base/state" "$base/spool" "$base/run" "$base/log"
    update_config
    start_munge
    start_slurm
    wait_for_node
    echo "local Slurm is up: node $(hostname -s), partition debug; state and logs in $base"
}

main "$@"
