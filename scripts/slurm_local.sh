#!/usr/bin/env bash
# A single-node SLURM cluster with accounting on this machine, for the cluster test and for trying the SLURM profile:
# munge, MariaDB, slurmdbd, slurmctld and slurmd from Debian's packages (SLURM 22.05 on Debian 12), each started
# directly in the background (no systemd needed, so it also runs in a container).
#
#   scripts/slurm_local.sh start     install the packages if missing, write the configs, start the daemons (as root)
#   scripts/slurm_local.sh status    which daemons run, the node and the account
#   scripts/slurm_local.sh stop      stop every daemon this script started (a daemon it found running is left alone)
#   scripts/slurm_local.sh install   only install the packages
#
# All steps are idempotent: `start` on a running cluster only checks it. The node gets `nproc` CPUs and 90 % of the
# memory; one partition (default: main, the default partition) and one account (default: lsqbq, root's default
# account), so `sbatch`, `sacct` and the project's SLURM profile work without a partition or an account given.
# Settings (environment): SLURM_LOCAL_PARTITION, SLURM_LOCAL_ACCOUNT, SLURM_LOCAL_STATE (state, logs; default
# /var/lib/slurm-local). Exit status 3: this machine cannot host the cluster (not root, packages not installable,
# a daemon does not come up); the message says why.
set -euo pipefail

PARTITION="${SLURM_LOCAL_PARTITION:-main}"
ACCOUNT="${SLURM_LOCAL_ACCOUNT:-lsqbq}"
STATE="${SLURM_LOCAL_STATE:-/var/lib/slurm-local}"
CLUSTER=lsqbq
MARK="# written by scripts/slurm_local.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
PACKAGES=(slurm-wlm slurmdbd mariadb-server munge)
NODE="$(hostname -s)"

say() { printf 'slurm_local: %s\n' "$*"; }
unavailable() { printf 'slurm_local: cannot run a local SLURM cluster here: %s\n' "$*" >&2; exit 3; }

need_root() { [[ $(id -u) -eq 0 ]] || unavailable "root is needed to install packages and start the daemons"; }

installed() {
    local cmd
    for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
        command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || return 1
    done
}

install() {
    need_root
    export PATH="$PATH:/usr/sbin:/sbin"
    if installed; then return 0; fi
    command -v apt-get >/dev/null || unavailable "no apt-get (a Debian or Ubuntu system is needed)"
    local start=$SECONDS
    say "installing ${PACKAGES[*]} (apt)"
    # Package scripts must not try to start services: there may be no init system.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1; fi
    local ok=1
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || ok=0
    if ((ok)); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
            >"${TMPDIR:-/tmp}/slurm_local-apt.log" 2>&1 || ok=0
    fi
    ((created_policy)) && rm -f "$policy"
    ((ok)) || unavailable "apt-get could not install ${PACKAGES[*]} (no package registry?);" \
        "see ${TMPDIR:-/tmp}/slurm_local-apt.log"
    installed || unavailable "the packages installed, but a daemon program is missing"
    say "packages installed in $((SECONDS - start)) s"
}

# --- processes this script started: $STATE/pids/NAME holds "PID START-TIME" ------------------------------------------
pidfile() { echo "$STATE/pids/$1"; }
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
pid_of() { local f; f="$(pidfile "$1")"; [[ -s $f ]] && cut -d' ' -f1 "$f"; }
running() {  # running NAME: the daemon this script started is alive (the same process, not a reused pid)
    local f pid start; f="$(pidfile "$1")"
    [[ -s $f ]] || return 1
    read -r pid start <"$f"
    [[ -n ${start:-} && "$(starttime "$pid")" == "$start" ]]
}
launch() {  # launch NAME COMMAND...: start a foreground daemon in its own session, log to $STATE/log/NAME.log
    local name=$1; shift
    setsid "$@" </dev/null >>"$STATE/log/$name.log" 2>&1 &
    local pid=$!
    echo "$pid $(starttime "$pid")" >"$(pidfile "$name")"
}
wait_for() {  # wait_for NAME SECONDS COMMAND...: until COMMAND succeeds, or fail naming the daemon's log
    local name=$1 limit=$2; shift 2
    local t=0
    until "$@" >/dev/null 2>&1; do
        if ((t >= limit * 5)) || { [[ -e $(pidfile "$name") ]] && ! running "$name"; }; then
            tail -n 20 "$STATE/log/$name.log" >&2 2>/dev/null || true
            unavailable "$name did not come up (log: $STATE/log/$name.log)"
        fi
        sleep 0.2; t=$((t + 1))
    done
}

write_configs() {
    mkdir -p /etc/slurm "$STATE"/{pids,log,slurmctld,slurmd} /run/munge /run/mysqld
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        unavailable "$CONF exists and was not written by this script; not touching a configured SLURM"
    fi
    local cpus mem_mb
    cpus="$(nproc)"
    mem_mb="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    cat >"$CONF.new" <<EOF
$MARK: a single-node cluster on $NODE
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.new" "$CONF"
    if [[ -e $DBD_CONF ]] && ! grep -qF "$MARK" "$DBD_CONF"; then
        unavailable "$DBD_CONF exists and was not written by this script"
    fi
    # slurmdbd runs as root and reaches MariaDB through its socket as root (unix_socket authentication): no password.
    (umask 077; cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    )
}

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    chown munge:munge /etc/munge/munge.key /run/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
    mkdir -p /var/log/munge /var/lib/munge; chown munge:munge /var/log/munge /var/lib/munge
    launch munged runuser -u munge -- munged --foreground
    wait_for munged 20 bash -c 'munge -n </dev/null | unmunge'
}

start_mariadb() {
    if mariadb-admin --protocol=socket ping >/dev/null 2>&1; then return; fi
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1 \
            || unavailable "mariadb-install-db failed (log: $STATE/log/mariadb-install.log)"
    fi
    chown mysql:mysql /run/mysqld
    launch mariadbd mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
        --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid
    wait_for mariadbd 60 mariadb-admin --protocol=socket ping
}

start_slurmdbd() {
    if running slurmdbd || pgrep -x slurmdbd >/dev/null; then return; fi
    launch slurmdbd slurmdbd -D
    wait_for slurmdbd 60 sacctmgr -n show cluster
}

setup_accounting() {  # cluster, account and root's association; sacctmgr -i answers "yes" itself
    sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
    sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT" \
        || sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description="local test account" \
            organization=local >/dev/null
    sacctmgr -n -P show assoc user=root cluster="$CLUSTER" format=account | grep -qx "$ACCOUNT" \
        || sacctmgr -i -Q add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
    sacctmgr -i -Q modify user root set defaultaccount="$ACCOUNT" >/dev/null 2>&1 || true
}

start_slurmctld() {
    if running slurmctld || pgrep -x slurmctld >/dev/null; then return; fi
    launch slurmctld slurmctld -D -i
    wait_for slurmctld 60 scontrol ping
}

node_ready() { sinfo -h -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)'; }

start_slurmd() {
    if ! running slurmd && ! pgrep -x slurmd >/dev/null; then
        launch slurmd slurmd -D -N "$NODE"
    fi
    local t=0
    until node_ready; do
        if ((t == 25)); then scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true; fi
        if ((t >= 300)); then
            sinfo -N -l >&2 || true; tail -n 20 "$STATE/log/slurmd.log" >&2 || true
            unavailable "node $NODE did not become idle (log: $STATE/log/slurmd.log)"
        fi
        sleep 0.2; t=$((t + 1))
    done
}

start() {
    need_root
    local t0=$SECONDS
    install
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    setup_accounting
    start_slurmctld
    start_slurmd
    say "cluster $CLUSTER up in $((SECONDS - t0)) s: node $NODE ($(nproc) CPUs), partition $PARTITION, account $ACCOUNT"
}

stop() {
    local name pid t
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        if running "$name"; then
            pid="$(pid_of "$name")"
            kill -TERM "$pid" 2>/dev/null || true
            for ((t = 0; t < 150; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
            say "stopped $name ($pid)"
        fi
        rm -f "$(pidfile "$name")"
    done
}

status() {
    local name rc=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if running "$name"; then echo "$name: running (pid $(pid_of "$name"))"
        elif pgrep -x "$name" >/dev/null 2>&1; then echo "$name: running (not started by this script)"
        else echo "$name: stopped"; rc=1; fi
    done
    if ((rc == 0)); then
        sinfo
        sacctmgr -n -P show assoc user=root format=cluster,account,user
    fi
    return $rc
}

export PATH="$PATH:/usr/sbin:/sbin"
case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    install) install ;;
    *) echo "usage: $0 start|stop|status|install" >&2; exit 2 ;;
esac
