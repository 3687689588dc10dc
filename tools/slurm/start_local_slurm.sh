#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (slurmctld + slurmd + slurmdbd, munge, MariaDB for accounting), for
# tests/test_slurm.py and for trying hydra/launcher=slurm without a cluster. Debian/Ubuntu, as root (a container is
# fine: no cgroups, no systemd needed). Idempotent: run it again to restart the daemons with a fresh config.
#
#   sudo tools/slurm/start_local_slurm.sh            # then: sinfo; python -m pytest tests/test_slurm.py -m slow
#   sudo tools/slurm/start_local_slurm.sh --stop
#
# Why accounting: submitit learns that a job ended without a result (scancel, a time limit) from `sacct`, which needs
# slurmdbd; without it a sweep waits forever for a cancelled job.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/spool/slurm
LOGS=/var/log/slurm
HOST=$(hostname -s)

stop() {
  for daemon in slurmd slurmctld slurmdbd; do
    if [ -f "/run/$daemon.pid" ]; then kill "$(cat "/run/$daemon.pid")" 2>/dev/null || true; rm -f "/run/$daemon.pid"; fi
  done
}

if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "run as root: it installs packages and starts daemons" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi
stop

# munge: the key the packages made, its daemon running as the munge user.
mkdir -p /run/munge && chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null

# MariaDB for slurmdbd: a database and a user slurm, local socket only.
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mariadb-admin ping >/dev/null 2>&1; then
  (mariadbd-safe --skip-networking=0 --bind-address=127.0.0.1 >/dev/null 2>&1 &)
  for _ in $(seq 60); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 1; done
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS"
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

cat > "$CONF_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
chmod 600 "$CONF_DIR/slurmdbd.conf"

# Cgroup-free (a container has no delegated cgroups): processes tracked by parent id, no task binding.
cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# Start a job that became eligible (a requeued one waits ~2 minutes first) within seconds, not at the next minute.
SchedulerParameters=sched_interval=5,bf_interval=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ReturnToService=2
# As on most clusters: SIGTERM at the time limit (or scancel), SIGKILL 30 s later; requeued jobs run again.
KillWait=30
JobRequeue=1
MpiDefault=none
MinJobAge=600
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$CONF_DIR/cgroup.conf" <<CONF
CgroupPlugin=autodetect
IgnoreSystemd=yes
CONF

/usr/sbin/slurmdbd
for _ in $(seq 30); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster local >/dev/null 2>&1 || true
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 1; done
scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
sinfo
