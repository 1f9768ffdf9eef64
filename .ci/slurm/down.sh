#!/usr/bin/env bash
# Stop the one-node Slurm cluster that .ci/slurm/up.sh started: slurmd,
# slurmctld and munged, each by the pid in its pid file (never by name).
# Jobs still running are cancelled first. Idempotent; leaves the packages and
# the state directory ($NUDIFF_SLURM_DIR, default /var/lib/nudiff-slurm) in
# place, so the next up.sh is fast. Set NUDIFF_SLURM_PURGE=1 to also remove
# the state directory and the /etc/slurm symlinks.
set -euo pipefail

STATE=${NUDIFF_SLURM_DIR:-/var/lib/nudiff-slurm}

say() { echo "slurm-down: $*"; }

stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    if [[ ! -s $pidfile ]] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "$name not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "stopped $name (pid $pid)"
            rm -f "$pidfile"
            return 0
        fi
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    say "killed $name (pid $pid) after 15 s"
}

[[ $(id -u) == 0 ]] || { echo "slurm-down: run as root: sudo $0" >&2; exit 1; }

if [[ -s $STATE/run/slurmctld.pid ]] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
    # Our cluster only: every job on it belongs to this machine's tests.
    scancel --quiet --state=RUNNING,PENDING,SUSPENDED 2>/dev/null || true
fi
stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
# munged is stopped only if nothing else on the machine uses it (i.e. when
# this state directory holds Slurm's only configuration).
if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/etc/slurm.conf" ]]; then
    stop munged /run/munge/munged.pid
fi

if [[ ${NUDIFF_SLURM_PURGE:-0} == 1 ]]; then
    for name in slurm.conf gres.conf; do
        [[ $(readlink "/etc/slurm/$name" 2>/dev/null) == "$STATE/etc/$name" ]] && rm -f "/etc/slurm/$name"
    done
    rm -rf "$STATE"
    say "removed $STATE"
fi
