#!/usr/bin/env bash
# scripts/podman.sh - Podman for tests/test_podman.py: `podman kube play` of the generated
# deploy/kubernetes manifests on this machine. Run as root; safe to run again.
#
# What it does, and why
#   1. apt-get install podman (Debian 12: 4.3) and catatonit (the pause process of its pods).
#   2. Writes /etc/containers/containers.conf, only when that file does not exist yet:
#      - runtime = "runc": Debian's default (crun) is not installed with --no-install-recommends;
#        runc is, with docker.io.
#      - default_ulimits below the machine's hard limits: podman asks for nofile=1048576 and
#        a large nproc by default, which runc cannot set where the hard limits are lower
#        ("error setting rlimit type 6: operation not permitted"); nproc=4096 is accepted.
#      - netns = "host": these machines allow no bridge or firewall changes; every test
#        container uses the host's loopback, as with the Docker engine.
#   3. Prints nothing on stdout; progress goes to stderr.
set -euo pipefail

say() { echo "podman: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "error: run as root (it installs packages)"; exit 1; }

t0=$SECONDS
if ! command -v podman >/dev/null || ! command -v catatonit >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends podman catatonit runc >/tmp/podman-apt.log 2>&1; then
        apt-get update -q >>/tmp/podman-apt.log 2>&1
        apt-get install -y -q --no-install-recommends podman catatonit runc >>/tmp/podman-apt.log 2>&1 || {
            tail -20 /tmp/podman-apt.log >&2
            exit 1
        }
    fi
    say "installed $(podman --version) in $((SECONDS - t0)) s"
fi

conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
    soft_nofile="$(ulimit -Hn)"
    [ "$soft_nofile" = unlimited ] && soft_nofile=1048576
    [ "$soft_nofile" -gt 65536 ] && soft_nofile=65536
    nproc_limit=4096
    mkdir -p /etc/containers
    cat >"$conf" <<CONF
# Written by scripts/podman.sh (aiorun-template): podman on a machine without bridges.
[containers]
netns = "host"
default_ulimits = ["nofile=${soft_nofile}:${soft_nofile}", "nproc=${nproc_limit}:${nproc_limit}"]

[engine]
runtime = "runc"
CONF
    say "wrote $conf"
fi
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' >&2
