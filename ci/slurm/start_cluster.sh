#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (CI / local testing), as root.
#
#   ci/slurm/start_cluster.sh            # install if needed, configure, start, wait until idle
#   ci/slurm/stop_cluster.sh             # stop exactly the daemons started here (by PID)
#
# What it sets up (cgroup-free, no accounting database):
#   - Debian packages slurmctld slurmd slurm-client munge (installed only when missing)
#   - /etc/slurm/slurm.conf + /etc/slurm/gres.conf (the jobstep plugin drops SLURM_CONF
#     before its inner srun, so the config must live at the default path)
#   - two fake GPUs (gres gpu:fake:2) whose File= entries are symlinks to character
#     devices (/dev/null, /dev/zero); SLURM sets CUDA_VISIBLE_DEVICES from them
#   - munged, slurmctld, slurmd in the foreground of background processes; their PIDs
#     are recorded in $CLOSERLOOK_SLURM_STATE/pids/*.pid for stop_cluster.sh
#   - no slurmdbd: job status must be polled with squeue (MinJobAge=300 keeps finished
#     jobs visible to squeue; profiles/slurm sets slurm-status-command: squeue)
#
# Idempotent: when the recorded daemons are alive and the node answers, it only
# re-checks readiness. Environment:
#   CLOSERLOOK_SLURM_STATE   state dir (default /tmp/closerlook-slurm)
#   CLOSERLOOK_SLURM_TIMEOUT seconds to wait for the node to become idle (default 60)
#   CLOSERLOOK_SLURM_FORCE=1 overwrite an /etc/slurm/slurm.conf not written by this script
set -euo pipefail

STATE=${CLOSERLOOK_SLURM_STATE:-/tmp/closerlook-slurm}
TIMEOUT=${CLOSERLOOK_SLURM_TIMEOUT:-60}
MARKER="# closerlook ci/slurm/start_cluster.sh"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
PIDS="$STATE/pids"
t0=$(date +%s.%N)

mkdir -p "$STATE"
# $STATE/status: starting | up | failed (rc N); $STATE/start.log: this script's messages.
# tests/slurm/conftest.py reads both when CI starts the cluster in the background.
echo starting > "$STATE/status"
trap 'rc=$?; [ "$rc" = 0 ] && echo up > "$STATE/status" || echo "failed (rc $rc)" > "$STATE/status"' EXIT
: > "$STATE/start.log"
exec 2> >(tee -a "$STATE/start.log" >&2)   # every message and diagnostic also lands there
log() { printf 'start_cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || die "must run as root (it writes /etc/slurm and starts daemons)"

# alive PIDFILE EXE: the recorded process exists and runs EXE (guards against PID reuse)
alive() {
  local pidfile=$1 exe=$2 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -d "/proc/$pid" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$(command -v "$exe")")" ]
}

node_idle() {
  # the node answers and is idle or (partly) allocated: usable
  local st
  st=$(sinfo -h -N -o '%T' 2>/dev/null | head -1) || return 1
  case "$st" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

wait_idle() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  while ! node_idle; do
    dead=""
    for d in slurmctld slurmd munged; do alive "$PIDS/$d.pid" "$d" || dead+=" $d"; done
    if [ -n "$dead" ] || [ "$(date +%s)" -ge "$deadline" ]; then
      [ -z "$dead" ] || log "daemon(s) exited:$dead"
      log "node did not become idle within ${TIMEOUT}s; sinfo says:"
      sinfo -N -l >&2 || true
      scontrol show node >&2 || true
      for f in slurmctld slurmd munged; do
        log "--- tail of $STATE/log/$f.log"; tail -n 20 "$STATE/log/$f.log" >&2 || true
      done
      exit 1
    fi
    # a node that came up DOWN/DRAINED (e.g. after a restart) is returned to service
    case "$(sinfo -h -N -o '%T' 2>/dev/null | head -1)" in
      down*|drain*|*drain) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.3
  done
}

NODE=$(hostname -s)

# ---- fast path: already running -------------------------------------------------
if alive "$PIDS/munged.pid" munged && alive "$PIDS/slurmctld.pid" slurmctld \
   && alive "$PIDS/slurmd.pid" slurmd; then
  wait_idle
  log "already running (node $NODE idle), state in $STATE [$(elapsed) s]"
  exit 0
fi

# ---- install ------------------------------------------------------------------------
missing=()
for b in munged slurmctld slurmd sinfo; do command -v "$b" >/dev/null || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(slurmctld slurmd slurm-client munge)
  # Debian's postinst scripts try to start the daemons through invoke-rc.d; keep them off.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.closerlook
  chmod +x /usr/sbin/policy-rc.d.closerlook
  had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ "$had_policy" = 1 ] || cp /usr/sbin/policy-rc.d.closerlook /usr/sbin/policy-rc.d
  apt_opts=(-y -qq --no-install-recommends -o DPkg::Lock::Timeout=300)  # wait for another apt
  if ! apt-get install "${apt_opts[@]}" "${pkgs[@]}" >/dev/null; then
    apt-get update -qq -o DPkg::Lock::Timeout=300
    apt-get install "${apt_opts[@]}" "${pkgs[@]}" >/dev/null
  fi
  [ "$had_policy" = 1 ] || rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.closerlook
  log "installed [$(elapsed) s]"
fi

# ---- stale state from a previous run: stop what we recorded ---------------------------
if ls "$PIDS"/*.pid >/dev/null 2>&1; then
  log "partial cluster from an earlier start found; stopping it first"
  CLOSERLOOK_SLURM_STATE="$STATE" "$(dirname "$0")/stop_cluster.sh"
fi

# ---- configuration ------------------------------------------------------------------
mkdir -p "$STATE"/{pids,log,ctld,slurmd,dev} /etc/slurm
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
REAL_MB=$(( MEM_MB * 9 / 10 ))                  # leave room for the OS
DEF_MEM=$(( REAL_MB / CPUS / 2 ))               # a job without --mem must not take the node
[ "$DEF_MEM" -ge 256 ] || DEF_MEM=256

# fake GPUs: gres File= must be character devices; names end in the GPU index
ln -sfn /dev/null "$STATE/dev/nvidia0"
ln -sfn /dev/zero "$STATE/dev/nvidia1"

if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF" && [ "${CLOSERLOOK_SLURM_FORCE:-0}" != 1 ]; then
  die "$CONF exists and was not written by this script; set CLOSERLOOK_SLURM_FORCE=1 to overwrite"
fi

cat > "$CONF" <<EOF
$MARKER (state: $STATE)
ClusterName=closerlook
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/ctld/slurmctld.self.pid
SlurmdPidFile=$STATE/slurmd/slurmd.self.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups on these machines
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# several jobs share the node; jobs without --mem get DefMemPerCPU per CPU
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
# finished jobs stay visible to squeue for 5 min (snakemake polls with squeue)
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
GresTypes=gpu
NodeName=$NODE CPUs=$CPUS RealMemory=$REAL_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat > "$GRES_CONF" <<EOF
$MARKER
NodeName=$NODE Name=gpu Type=fake File=$STATE/dev/nvidia0
NodeName=$NODE Name=gpu Type=fake File=$STATE/dev/nvidia1
EOF

# ---- munge ---------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 755 /run/munge

start_bg() {  # start_bg NAME CMD...: run in the foreground of a background process, record PID
  local name=$1; shift
  setsid "$@" >"$STATE/log/$name.out" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$PIDS/$name.pid"
  # $! is the forked shell until it has exec'd the daemon (via setsid/setpriv): wait for
  # that, so that the alive checks below do not take a slow exec (busy machine) for an exit
  for _ in $(seq 200); do
    alive "$PIDS/$name.pid" "$name" && return 0
    [ -d "/proc/$pid" ] || return 0
    sleep 0.05
  done
}

if id munge >/dev/null 2>&1; then
  # setpriv execs munged, so the recorded PID is munged's own
  start_bg munged setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --log-file="$STATE/log/munged.log"
else
  start_bg munged munged -F --force --log-file="$STATE/log/munged.log"
fi
for _ in $(seq 100); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.05; done
munge -n >/dev/null || die "munge does not work; see $STATE/log/munged.log"

# ---- slurm daemons ---------------------------------------------------------------------
start_bg slurmctld slurmctld -D -c   # -c: a fresh queue, no jobs recovered from an earlier run
for _ in $(seq 100); do
  scontrol ping 2>/dev/null | grep -q UP && break
  alive "$PIDS/slurmctld.pid" slurmctld || { tail -n 20 "$STATE/log/slurmctld.log" >&2; die "slurmctld exited"; }
  sleep 0.1
done
start_bg slurmd slurmd -D
wait_idle
log "cluster up: node $NODE CPUs=$CPUS RealMemory=${REAL_MB}M gres gpu:fake:2, state in $STATE [$(elapsed) s]"
