#!/usr/bin/env bash
# A real Slurm cluster on this machine, two emulated nodes (n1, n2), for the multi-node tests.
#
#   experiments/slurm/local_cluster.sh start   # installs Debian's slurm + munge if missing, starts it
#   experiments/slurm/local_cluster.sh stop
#   export SLURM_CONF=$LOCAL_SLURM_DIR/slurm.conf   # what the client commands need (start prints it)
#
# No systemd: munged runs as user munge, slurmctld and one slurmd per emulated node run as root,
# all state under $LOCAL_SLURM_DIR (default /tmp/longwatch-slurm).
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/longwatch-slurm}
CONF=$DIR/slurm.conf
CPUS=$(nproc)

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || { echo "local_cluster: slurm is not installed and installing needs root" >&2; exit 1; }
  echo "local_cluster: installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool"
  cat >"$CONF" <<CONF
ClusterName=longwatch
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=4
KillWait=10
InactiveLimit=0
JobRequeue=1
NodeName=n[1-2] NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

start_munge() {
  pgrep -x munged >/dev/null && return
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
}

wait_for_nodes() {
  for _ in $(seq 1 60); do
    if [ "$(SLURM_CONF=$CONF sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" -ge 2 ]; then
      return 0
    fi
    sleep 0.5
  done
  echo "local_cluster: nodes did not come up; see $DIR/*.log" >&2
  SLURM_CONF=$CONF sinfo -N >&2 || true
  exit 1
}

case "${1:-}" in
  start)
    install_packages
    "$0" stop >/dev/null 2>&1 || true
    write_conf
    start_munge
    slurmctld -f "$CONF" -i
    slurmd -f "$CONF" -N n1
    slurmd -f "$CONF" -N n2
    wait_for_nodes
    echo "local_cluster: up (2 nodes). export SLURM_CONF=$CONF"
    ;;
  stop)
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    for _ in $(seq 1 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.25; done
    rm -rf "$DIR/state"
    echo "local_cluster: stopped"
    ;;
  *)
    echo "usage: $0 {start|stop}" >&2
    exit 2
    ;;
esac
