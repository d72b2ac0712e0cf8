#!/usr/bin/env bash
# Start (idempotently) a single-node Slurm cluster and an sshd on 127.0.0.1 for tests and demos.
#
# No systemd is assumed (containers, CI runners): munged, slurmctld, slurmd and sshd are started
# directly and recognised by their pid files, so running this script again only starts what is not
# running. Prints the Airflow connection as AIRFLOW_CONN_CRYOEM_SLURM (JSON) and writes it to
# $CRYOEM_SLURM_DIR/airflow_conn.json. Must run as root (it installs packages and starts daemons).
#
# `local_slurm.sh rest` also starts slurmrestd on 127.0.0.1 (JWT auth, as the unprivileged user
# cryoem-rest, since slurmrestd refuses root) and prints AIRFLOW_CONN_CRYOEM_SLURM_REST: an HTTP
# connection whose password is a JWT from `scontrol token` for root (the SSH connection's login).
# slurm.conf always carries AuthAltTypes=auth/jwt, so switching between the two never restarts Slurm.
#
# `local_slurm.sh stop` stops the daemons again (by their pid files); `stop-rest` only slurmrestd.
#
# Settings (environment): CRYOEM_SLURM_DIR (default /var/lib/cryoem-slurm),
# CRYOEM_SLURM_SSH_PORT (default 2222), CRYOEM_SLURM_PARTITION (default cryoem),
# CRYOEM_SLURM_REST_PORT (default 6820), CRYOEM_SLURM_TOKEN_LIFESPAN_S (default 86400).
set -euo pipefail

STATE_DIR="${CRYOEM_SLURM_DIR:-/var/lib/cryoem-slurm}"
SSH_PORT="${CRYOEM_SLURM_SSH_PORT:-2222}"
PARTITION="${CRYOEM_SLURM_PARTITION:-cryoem}"
REST_PORT="${CRYOEM_SLURM_REST_PORT:-6820}"
TOKEN_LIFESPAN_S="${CRYOEM_SLURM_TOKEN_LIFESPAN_S:-86400}"
REST_USER=cryoem-rest
JWT_KEY=/var/spool/slurmctld/jwt_hs256.key
SLURM_CONF=/etc/slurm/slurm.conf
JOBCOMP_LOG=/var/log/slurm/jobcomp.log
NODE="$(hostname -s)"

log() { echo "[local_slurm] $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "local_slurm.sh must run as root (installs packages, starts munged/slurmctld/slurmd/sshd)" >&2
    exit 1
fi

install_missing_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmrestd >/dev/null || missing+=(slurmrestd)
    dpkg -s slurm-wlm-jwt-plugin >/dev/null 2>&1 || missing+=(slurm-wlm-jwt-plugin)  # AuthAltTypes=auth/jwt
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v relion_image_handler >/dev/null || missing+=(relion)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# True when the pid file names a live process.
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! running /run/munge/munged.pid; then
        log "starting munged"
        runuser -u munge -- /usr/sbin/munged --force
    fi
}

write_slurm_conf() {
    local cpus mem_mb new
    cpus="$(nproc)"
    mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    new="$(cat <<CONF
# Written by scripts/local_slurm.sh: single node, no systemd, no cgroups, no accounting database.
ClusterName=cryoem-local
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=${JWT_KEY}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${JOBCOMP_LOG}
MinJobAge=86400
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
# Kept DOWN: benchmarks/bench_slurm_slots.py queues its jobs here, so they stay PENDING without holding up others.
PartitionName=cryoem_bench Nodes=ALL MaxTime=INFINITE State=DOWN
CONF
)"
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    if [ ! -s "$JWT_KEY" ]; then
        dd if=/dev/urandom bs=32 count=1 of="$JWT_KEY" status=none
    fi
    chmod 600 "$JWT_KEY"
    if [ ! -f "$SLURM_CONF" ] || [ "$(cat "$SLURM_CONF")" != "$new" ]; then
        log "writing $SLURM_CONF"
        printf '%s\n' "$new" > "$SLURM_CONF"
        # A changed configuration needs fresh daemons.
        for pidfile in /run/slurmctld.pid /run/slurmd.pid; do
            if running "$pidfile"; then kill "$(cat "$pidfile")"; fi
        done
        sleep 1
    fi
}

start_slurm() {
    if ! running /run/slurmctld.pid; then
        log "starting slurmctld"
        slurmctld
    fi
    if ! running /run/slurmd.pid; then
        log "starting slurmd"
        slurmd
    fi
    local state=""
    for _ in $(seq 1 60); do
        state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1 || true)"
        case "$state" in
            idle*|mixed*|allocated*|completing*) return 0 ;;
            down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    echo "Slurm node $NODE did not become available (state '${state}'); see /var/log/slurm/" >&2
    exit 1
}

start_sshd() {
    mkdir -p "$STATE_DIR/jobs" /run/sshd
    chmod 700 "$STATE_DIR"
    [ -f "$STATE_DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$STATE_DIR/ssh_host_ed25519_key"
    [ -f "$STATE_DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C cryoem-slurm -f "$STATE_DIR/id_ed25519"
    cp "$STATE_DIR/id_ed25519.pub" "$STATE_DIR/authorized_keys"
    chmod 600 "$STATE_DIR/authorized_keys"
    if ! running "$STATE_DIR/sshd.pid"; then
        log "starting sshd on 127.0.0.1:$SSH_PORT"
        /usr/sbin/sshd -p "$SSH_PORT" -h "$STATE_DIR/ssh_host_ed25519_key" \
            -o ListenAddress=127.0.0.1 -o PidFile="$STATE_DIR/sshd.pid" \
            -o AuthorizedKeysFile="$STATE_DIR/authorized_keys" -o PasswordAuthentication=no \
            -o KbdInteractiveAuthentication=no -o PermitRootLogin=prohibit-password -o UsePAM=no
    fi
    # Trust the host key the way an administrator would (ssh-keyscan): both Airflow SSH hooks read
    # ~/.ssh/known_hosts, and the async hook mis-keys a `host_key` extra on a non-default port.
    local entry
    entry="[127.0.0.1]:${SSH_PORT} $(cut -d' ' -f1,2 "$STATE_DIR/ssh_host_ed25519_key.pub")"
    mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" && touch "$HOME/.ssh/known_hosts"
    if ! grep -qxF "$entry" "$HOME/.ssh/known_hosts"; then
        ssh-keygen -q -R "[127.0.0.1]:${SSH_PORT}" -f "$HOME/.ssh/known_hosts" >/dev/null 2>&1 || true
        echo "$entry" >> "$HOME/.ssh/known_hosts"
    fi
}

print_connection() {
    local conn
    conn="$(cat <<JSON
{"conn_type": "ssh", "host": "127.0.0.1", "port": ${SSH_PORT}, "login": "root", "extra": {"key_file": "${STATE_DIR}/id_ed25519", "look_for_keys": "false", "slurm_partition": "${PARTITION}", "slurm_remote_workdir": "${STATE_DIR}/jobs", "slurm_jobcomp_file": "${JOBCOMP_LOG}"}}
JSON
)"
    printf '%s\n' "$conn" > "$STATE_DIR/airflow_conn.json"
    chmod 600 "$STATE_DIR/airflow_conn.json"
    printf "export AIRFLOW_CONN_CRYOEM_SLURM='%s'\n" "$conn"
}

# slurmrestd has no daemon mode: run it detached, remember its pid, wait until it answers.
start_slurmrestd() {
    id "$REST_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$REST_USER"
    if ! running "$STATE_DIR/slurmrestd.pid"; then
        log "starting slurmrestd on 127.0.0.1:$REST_PORT"
        SLURM_JWT=daemon setsid runuser -u "$REST_USER" -- /usr/sbin/slurmrestd -a rest_auth/jwt -s openapi/v0.0.38 \
            "127.0.0.1:${REST_PORT}" </dev/null >>/var/log/slurm/slurmrestd.log 2>&1 &
        echo $! > "$STATE_DIR/slurmrestd.pid"
    fi
    for _ in $(seq 1 50); do
        # Any HTTP answer will do (even /openapi wants a token: 401 means it is up).
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${REST_PORT}/openapi/v3")" != 000 ]; then
            return 0
        fi
        sleep 0.2
    done
    echo "slurmrestd did not answer on 127.0.0.1:$REST_PORT; see /var/log/slurm/slurmrestd.log" >&2
    exit 1
}

print_rest_connection() {
    local token conn
    token="$(scontrol token username=root lifespan="$TOKEN_LIFESPAN_S" | sed -n 's/^SLURM_JWT=//p')"
    conn="$(cat <<JSON
{"conn_type": "http", "host": "127.0.0.1", "port": ${REST_PORT}, "schema": "http", "login": "root", "password": "${token}", "extra": {"slurm_partition": "${PARTITION}", "slurm_remote_workdir": "${STATE_DIR}/jobs", "slurm_jobcomp_file": "${JOBCOMP_LOG}"}}
JSON
)"
    printf '%s\n' "$conn" > "$STATE_DIR/airflow_conn_rest.json"
    chmod 600 "$STATE_DIR/airflow_conn_rest.json"
    printf "export AIRFLOW_CONN_CRYOEM_SLURM_REST='%s'\n" "$conn"
}

stop_all() {
    local pidfile pid
    for pidfile in "$@"; do
        if running "$pidfile"; then
            pid="$(cat "$pidfile")"
            log "stopping pid $pid ($pidfile)"
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
}

case "${1:-start}" in
    stop) stop_all "$STATE_DIR/slurmrestd.pid" /run/slurmd.pid /run/slurmctld.pid "$STATE_DIR/sshd.pid" \
              /run/munge/munged.pid; exit 0 ;;
    stop-rest) stop_all "$STATE_DIR/slurmrestd.pid"; exit 0 ;;
esac
install_missing_packages
start_munge
write_slurm_conf
start_slurm
start_sshd
print_connection
if [ "${1:-start}" = "rest" ]; then
    start_slurmrestd
    print_rest_connection
fi
