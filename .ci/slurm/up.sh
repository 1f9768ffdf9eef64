#!/usr/bin/env bash
# Start a one-node Slurm cluster on this machine, with fake GPUs, for testing
# profiles/slurm (tests/test_slurm.py). Meant for throwaway CI machines and
# containers (Debian/Ubuntu, root, no systemd needed); never for a real cluster.
#
#   sudo .ci/slurm/up.sh        # install (apt) if missing, configure, start, wait until idle
#   sudo .ci/slurm/down.sh      # stop the daemons again
#
# Idempotent: a second run with everything up only checks (well under 1 s);
# a changed configuration restarts the Slurm daemons.
#
# Everything lives under the state directory $NUDIFF_SLURM_DIR
# (default /var/lib/nudiff-slurm):
#   etc/slurm.conf, etc/gres.conf   the configuration (from .ci/slurm/slurm.conf.in);
#                                   /etc/slurm/{slurm,gres}.conf are symlinks to them,
#                                   so sinfo/sbatch find it without SLURM_CONF
#   etc/task_prolog.sh              writes each task's CUDA_VISIBLE_DEVICES to its log
#   gpus/nvidia0..N                 the fake GPUs: symlinks to /dev/null
#   spool/, log/, run/              Slurm's state, logs and pid files
# munged keeps Debian's own places (/etc/munge/munge.key, /run/munge).
#
# Settings (environment): NUDIFF_SLURM_GPUS (2), NUDIFF_SLURM_GPU_TYPE (fake),
# NUDIFF_SLURM_PARTITION (debug).
set -euo pipefail

STATE=${NUDIFF_SLURM_DIR:-/var/lib/nudiff-slurm}
GPUS=${NUDIFF_SLURM_GPUS:-2}
GPU_TYPE=${NUDIFF_SLURM_GPU_TYPE:-fake}
PARTITION=${NUDIFF_SLURM_PARTITION:-debug}
HERE=$(cd "$(dirname "$0")" && pwd)
START=$EPOCHREALTIME

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons): sudo $0"

# ---- packages -----------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get to install it"
    say "installing slurmctld slurmd slurm-client munge (apt)"
    # The packages' postinst scripts would start the daemons through init
    # scripts; a policy-rc.d answering 101 stops that (only if none exists).
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt_status=0
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null || apt_status=$?
    [[ $added_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $apt_status == 0 ]] || die "apt-get install failed (exit $apt_status)"
fi
getent passwd slurm >/dev/null || die "no user 'slurm' (the slurm packages create it)"
getent passwd munge >/dev/null || die "no user 'munge' (the munge package creates it)"

# ---- configuration ----------------------------------------------------------------
HOST=$(hostname -s)
mkdir -p "$STATE"/{etc,gpus,spool/slurmctld,spool/slurmd,log,run}
chown slurm:slurm "$STATE"/spool/slurmctld "$STATE"/log "$STATE"/run
chmod 0755 "$STATE" "$STATE"/{etc,gpus,spool,log,run}

gres=$(mktemp)
conf=$(mktemp)
trap 'rm -f "$gres" "$conf"' EXIT
echo "# Fake GPUs (written by .ci/slurm/up.sh): each File= is a symlink to /dev/null." > "$gres"
echo "AutoDetect=off" >> "$gres"
for ((i = 0; i < GPUS; i++)); do
    ln -sfn /dev/null "$STATE/gpus/nvidia$i"
    echo "Name=gpu Type=$GPU_TYPE File=$STATE/gpus/nvidia$i" >> "$gres"
done

# The node's CPUs and memory as slurmd itself sees them (90% of the memory, so
# that a slightly different count at registration does not make it INVAL).
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
memory=$((memory * 9 / 10))
sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY@|$memory|g" \
    -e "s|@GPU_TYPE@|$GPU_TYPE|g" -e "s|@GPUS@|$GPUS|g" -e "s|@PARTITION@|$PARTITION|g" \
    "$HERE/slurm.conf.in" > "$conf"

changed=0
if ! cmp -s "$HERE/task_prolog.sh" "$STATE/etc/task_prolog.sh"; then
    install -m 0755 "$HERE/task_prolog.sh" "$STATE/etc/task_prolog.sh"
fi
for name in slurm.conf gres.conf; do
    new=$conf; [[ $name == gres.conf ]] && new=$gres
    if ! cmp -s "$new" "$STATE/etc/$name"; then
        install -m 0644 "$new" "$STATE/etc/$name"
        changed=1
    fi
    link=/etc/slurm/$name
    mkdir -p /etc/slurm
    if [[ -e $link || -L $link ]] && [[ $(readlink "$link") != "$STATE/etc/$name" ]]; then
        die "$link exists and is not this script's; refusing to replace a real Slurm configuration"
    fi
    ln -sfn "$STATE/etc/$name" "$link"
done

# ---- daemons ------------------------------------------------------------------------
stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, then wait up to 10 s
    running "$2" || return 0
    local pid
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    die "$1 (pid $pid) did not stop"
}

if [[ $changed == 1 ]]; then
    say "configuration written to $STATE/etc"
    stop_pid slurmd "$STATE/run/slurmd.pid"
    stop_pid slurmctld "$STATE/run/slurmctld.pid"
fi

start() {  # start NAME PIDFILE COMMAND...: the daemons fork; wait for their pid file
    local name=$1 pidfile=$2
    shift 2
    "$@"
    for _ in $(seq 100); do running "$pidfile" && break; sleep 0.1; done
    running "$pidfile" || die "$name did not start; see its log under $STATE/log (munged: /var/log/munge)"
    say "started $name (pid $(cat "$pidfile"))"
}

if ! running /run/munge/munged.pid; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    start munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
fi
# -i: ignore state files an earlier cluster may have left
running "$STATE/run/slurmctld.pid" || start slurmctld "$STATE/run/slurmctld.pid" slurmctld -i
slurmd_started=""
if ! running "$STATE/run/slurmd.pid"; then
    slurmd_started=$(date +%s)
    start slurmd "$STATE/run/slurmd.pid" slurmd
fi

# ---- wait until the node takes jobs --------------------------------------------------------
# slurmctld restores the node's last state, so "idle" alone may predate this
# slurmd: also wait until slurmd has registered (SlurmdStartTime).
registered() {
    [[ -z $slurmd_started ]] && return 0
    local t
    t=$(scontrol show node "$HOST" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')
    [[ -n $t && $t != None ]] && (( $(date -d "$t" +%s 2>/dev/null || echo 0) >= slurmd_started ))
}
state=""
for _ in $(seq 300); do
    state=""
    registered && state=$(sinfo -h -N -n "$HOST" -p "$PARTITION" -o %t 2>/dev/null | head -1 || true)
    case $state in
        idle | mix | alloc) break ;;
        drain* | down* | inval* | fail*)
            # e.g. left over from a daemon restart; ReturnToService=2 usually does this itself
            scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.1
done
case $state in
    idle | mix | alloc) ;;
    *) die "node $HOST is '${state:-unknown}' after 30 s; see $STATE/log/slurmd.log and slurmctld.log
$(scontrol show node "$HOST" 2>&1 | grep -iE 'state|reason' || true)" ;;
esac

say "node $HOST is $state: partition $PARTITION (default), $cpus CPUs, ${memory} MB, $GPUS GPUs gpu:$GPU_TYPE (fake)"
say "state directory $STATE; stop with $(dirname "$0")/down.sh"
say "ready in $(elapsed) s"
