#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by ci/slurm/start_cluster.sh.
#
# Cancels the jobs still in this cluster's queue, then stops exactly the daemons
# whose PIDs start_cluster.sh recorded in $CLOSERLOOK_SLURM_STATE/pids (never by
# name). A PID is signalled only while it still runs the expected binary, so a
# reused PID is never hit. Idempotent: nothing recorded -> nothing to do.
set -uo pipefail

STATE=${CLOSERLOOK_SLURM_STATE:-/tmp/closerlook-slurm}
PIDS="$STATE/pids"
log() { printf 'stop_cluster: %s\n' "$*" >&2; }
# running PID: the process exists and is not a zombie waiting for its parent
running() { [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# pid_of NAME EXE: print the recorded PID if that process still runs EXE
pid_of() {
  local pidfile="$PIDS/$1.pid" exe=$2 pid want
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  running "$pid" || return 1
  want=$(command -v "$exe" 2>/dev/null) || return 1
  [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$want")" ] || return 1
  echo "$pid"
}

[ -d "$STATE" ] && echo stopped > "$STATE/status"
if ! ls "$PIDS"/*.pid >/dev/null 2>&1; then
  log "nothing recorded in $PIDS; nothing to stop"
  exit 0
fi

# jobs first, while slurmctld/slurmd still run: their slurmstepd processes end with them
if pid_of slurmctld slurmctld >/dev/null && pid_of slurmd slurmd >/dev/null; then
  if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    log "cancelling the jobs left in the queue"
    squeue -h -o %i | xargs -r scancel >/dev/null 2>&1 || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -t RUNNING,COMPLETING,PENDING -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

rc=0
for spec in slurmd:slurmd slurmctld:slurmctld munged:munged; do
  name=${spec%%:*} exe=${spec#*:}
  if pid=$(pid_of "$name" "$exe"); then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
      log "$name (PID $pid) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    if running "$pid"; then log "$name (PID $pid) still running"; rc=1; continue; fi
    log "stopped $name (PID $pid)"
  else
    log "$name: not running (recorded PID gone)"
  fi
  rm -f "$PIDS/$name.pid"
done
exit "$rc"
