#!/usr/bin/env bash
# scripts/systemd-image.sh - a local Debian image with systemd as PID 1 and Python 3, for
# tests/test_systemd.py, which runs the generated deploy/systemd unit under a real systemd.
#
# The engine is the one from scripts/docker-engine.sh (run that first). Like its Python base
# images, this one is debootstrapped from the mirror in the machine's own apt sources, since
# no registry can be reached: Debian bookworm (minbase) with systemd, systemd-sysv (so
# /sbin/init is systemd), python3 and venv, and the host's CA bundle and pip index settings so
# that pip inside a build reaches the same index as the host. Imported as
# aiorun-template/systemd:bookworm; an existing image is reused. Run as root.
#
# How the tests run it (systemd as PID 1 in a container, checked on this engine):
#   docker run --cap-add SYS_ADMIN --security-opt seccomp=unconfined --cgroupns=host \
#       -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock IMAGE
# (--privileged does not work here: the engine lacks CAP_SYS_RESOURCE to grant it.)
set -euo pipefail
cd "$(dirname "$0")/.."

# The engine's socket, root and the mirror/pip helpers come from docker-engine.sh.
# shellcheck source=docker-engine.sh
source scripts/docker-engine.sh --env 2>/dev/null
tag="aiorun-template/systemd:bookworm"
say() { echo "systemd-image: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "error: run as root (debootstrap)"; exit 1; }
docker info >/dev/null 2>&1 || { say "error: no engine at $DOCKER_HOST; run scripts/docker-engine.sh"; exit 1; }

if docker image inspect "$tag" >/dev/null 2>&1; then
    say "reusing $tag"
    exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -q >&2; apt-get install -y -q debootstrap >&2; }

t0=$SECONDS
tree="$_aiorun_docker_root/rootfs/systemd-bookworm"
mirror="$(_aiorun_docker_mirror)"
rm -rf "$tree"
mkdir -p "$tree"
say "debootstrap bookworm + systemd from $mirror"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,python3,python3-venv,ca-certificates \
    bookworm "$tree" "$mirror" >"$_aiorun_docker_root/debootstrap-systemd.log" 2>&1 ||
    { say "error: debootstrap failed; see $_aiorun_docker_root/debootstrap-systemd.log"; exit 1; }
cp /etc/ssl/certs/ca-certificates.crt "$tree/etc/ssl/certs/ca-certificates.crt"
_aiorun_docker_pip_conf >"$tree/etc/pip.conf"
# A container has no consoles or hardware to wait for; these units only slow the boot down.
for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
    systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
    systemd-remount-fs.service systemd-firstboot.service; do
    ln -sf /dev/null "$tree/etc/systemd/system/$unit"
done
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
    "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/tmp/*
: >"$tree/etc/machine-id"
tar --numeric-owner -C "$tree" -cf - . |
    docker import \
        --change 'ENV container=docker' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/sbin/init"]' \
        - "$tag" >/dev/null
rm -rf "$tree"
say "imported $tag in $((SECONDS - t0)) s"
