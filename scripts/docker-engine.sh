#!/usr/bin/env bash
# scripts/docker-engine.sh - a private Docker Engine and local Python base images, for the
# template's Docker tests (tests/test_docker.py) and for contributors.
#
# Why this script exists
#   The development and CI machines have the docker CLI but no engine, and no container
#   registry can be reached, so `python:*-slim` cannot be pulled. Everything the Docker tests
#   need is therefore made here, from Debian packages only, as root:
#
#   1. Packages. `docker.io` brings dockerd (and the containerd/runc it manages); `debootstrap`
#      builds Debian root filesystems. apt-get update runs once, and only when one is missing.
#   2. Engine. dockerd is started on a private socket (not /var/run/docker.sock), with its
#      data root and exec root under a directory of ours, so it never meets another engine on
#      the machine. `--bridge=none --iptables=false --ip-masq=false`: containers get no bridge
#      address and the host's firewall is left alone. Builds and runs use `--network host`
#      only, so all the traffic of the tests stays on loopback. A running engine that answers
#      on the socket is reused; we wait a bounded time for a new one to answer `docker info`.
#   3. Base images. Instead of the registry's python:X-slim, `debootstrap --variant=minbase`
#      builds Debian bookworm (Python 3.11), trixie (3.13), forky (3.14) and sid with its
#      python3.15 (3.15), with Python, venv and CA certificates, from the mirror the machine's
#      own apt sources use. A suite written `sid:3.15` gets that Python's own packages and
#      `python`/`python3` links to it in /usr/local/bin. The host's debootstrap may be too old
#      to know forky; every suite newer than trixie is built with debootstrap's sid script,
#      which only needs the suite's name to exist on the mirror. The host's CA bundle is
#      copied in so pip inside a build trusts the same CAs as the host, and the host's pip
#      index settings (http/https ones only: file:// indexes do not exist inside) are written
#      to the image's /etc/pip.conf, so builds reach the same package index as the host over
#      --network host. The trees are imported as aiorun-template/python:<3.X> (also tagged
#      :<suite>, or :<suite>-<3.X> for a suite:version entry), and the generated Dockerfile takes them through its PYTHON_IMAGE build arg.
#      Existing images are reused.
#   4. Environment. The `export DOCKER_HOST=...` line to use is printed on stdout, so
#      `eval "$(sudo scripts/docker-engine.sh)"` works; sourcing the script exports it directly.
#
# Usage (as root)
#   scripts/docker-engine.sh              set everything up, print the export line
#   source scripts/docker-engine.sh       the same, and export DOCKER_HOST in this shell
#   scripts/docker-engine.sh --engine     engine only, no base images
#   scripts/docker-engine.sh --env        print the export line only (changes nothing)
#   scripts/docker-engine.sh --stop       stop the engine this script started
#
# Settings (environment)
#   AIORUN_DOCKER_ROOT    data, exec root, logs, rootfs work dirs (/var/lib/aiorun-template-docker)
#   AIORUN_DOCKER_RUN     directory of the private socket (/run/aiorun-template)
#   AIORUN_DOCKER_SUITES  Debian suites to build bases for ("bookworm trixie forky sid:3.15")
#   AIORUN_DOCKER_WAIT    seconds to wait for a new engine to answer (60)

_aiorun_docker_root="${AIORUN_DOCKER_ROOT:-/var/lib/aiorun-template-docker}"
_aiorun_docker_run="${AIORUN_DOCKER_RUN:-/run/aiorun-template}"
_aiorun_docker_host="unix://${_aiorun_docker_run}/docker.sock"

_aiorun_docker_main() {
    set -euo pipefail
    local root="$_aiorun_docker_root" rundir="$_aiorun_docker_run" host="$_aiorun_docker_host"
    local suites="${AIORUN_DOCKER_SUITES:-bookworm trixie forky sid:3.15}"
    local wait_s="${AIORUN_DOCKER_WAIT:-60}"
    local mode="${1:-all}"

    log() { printf '[docker-engine] %s\n' "$*" >&2; }
    die() { log "error: $*"; exit 1; }
    dk() { docker -H "$host" "$@"; }
    engine_answers() { dk info >/dev/null 2>&1; }
    now() { date +%s.%N; }
    since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

    case "$mode" in
        --env) return 0 ;;
        all | --engine | --stop) ;;
        *) die "unknown option: $mode (see the header of $0)" ;;
    esac

    [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

    if [ "$mode" = --stop ]; then
        local pid
        pid="$(cat "$root/dockerd.pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "stopping dockerd (pid $pid)"
            kill -TERM "$pid"
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            ! kill -0 "$pid" 2>/dev/null || die "dockerd $pid did not stop in 30 s"
        else
            log "no dockerd of ours is running"
        fi
        return 0
    fi

    # 1. Packages ---------------------------------------------------------------------------
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    if [ "${#missing[@]}" -gt 0 ]; then
        local t0
        t0="$(now)"
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        # docker.io twice in the list is harmless for apt.
        apt-get install -y -q "${missing[@]}" >&2
        log "packages installed in $(since "$t0") s"
    fi

    # 2. Engine ----------------------------------------------------------------------------
    mkdir -p "$root/data" "$root/exec" "$rundir"
    if engine_answers; then
        log "reusing the engine at $host"
    else
        local t0 pid
        t0="$(now)"
        # A stale pidfile or socket from an engine that died would stop dockerd from starting.
        pid="$(cat "$root/dockerd.pid" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            die "dockerd (pid $pid) runs but does not answer at $host; see $root/dockerd.log"
        fi
        rm -f "$root/dockerd.pid" "$rundir/docker.sock"
        log "starting dockerd at $host (log: $root/dockerd.log)"
        setsid dockerd \
            --host "$host" \
            --data-root "$root/data" \
            --exec-root "$root/exec" \
            --pidfile "$root/dockerd.pid" \
            --bridge=none --iptables=false --ip-masq=false \
            --log-level warn \
            </dev/null >>"$root/dockerd.log" 2>&1 &
        pid=$!
        local deadline=$((SECONDS + wait_s))
        until engine_answers; do
            kill -0 "$pid" 2>/dev/null || die "dockerd exited; see $root/dockerd.log"
            [ "$SECONDS" -lt "$deadline" ] || die "no answer from dockerd in $wait_s s; see $root/dockerd.log"
            sleep 0.2
        done
        log "engine up in $(since "$t0") s (storage driver: $(dk info --format '{{.Driver}}'))"
    fi

    # 3. Base images -----------------------------------------------------------------------
    if [ "$mode" = all ]; then
        local suite
        for suite in $suites; do
            build_base "$suite"
        done
    fi
}

# The first Debian archive URI in the machine's apt sources (deb822 or one-line format),
# ignoring security and third-party repositories; deb.debian.org when there is none.
_aiorun_docker_mirror() {
    local files=() f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && files+=("$f")
    done
    uri="$(
        {
            [ "${#files[@]}" -gt 0 ] && cat "${files[@]}"
        } | sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' |
            tr ' ' '\n' | grep -E '^https?://' | grep -E '/debian/?$' | head -n 1
    )"
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# pip settings for inside the images: the host's CA bundle, plus the host's index URLs when
# they are http(s) (a file:// index on the host's disk does not exist in a container).
_aiorun_docker_pip_conf() {
    local index extra u keep=()
    index="$(pip3 config get global.index-url 2>/dev/null || true)"
    extra="$(pip3 config get global.extra-index-url 2>/dev/null || true)"
    echo "# Written by scripts/docker-engine.sh: reach the host's package index with its CAs."
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    echo "disable-pip-version-check = true"
    echo "timeout = 180"
    case "$index" in http://* | https://*) echo "index-url = $index" ;; esac
    for u in $extra; do
        case "$u" in http://* | https://*) keep+=("$u") ;; esac
    done
    [ "${#keep[@]}" -eq 0 ] || echo "extra-index-url = ${keep[*]}"
}

build_base() {
    local suite="${1%%:*}" version=""
    [ "$suite" = "$1" ] || version="${1#*:}"
    local root="$_aiorun_docker_root" host="$_aiorun_docker_host"
    local tag_suite="aiorun-template/python:$suite${version:+-$version}"
    if docker -H "$host" image inspect "$tag_suite" >/dev/null 2>&1; then
        log "reusing $tag_suite ($(docker -H "$host" image inspect "$tag_suite" \
            --format '{{index .Config.Labels "org.aiorun-template.python"}}'))"
        return 0
    fi
    local mirror tree t0 pyver script="" include="python3,python3-venv,python-is-python3"
    mirror="$(_aiorun_docker_mirror)"
    tree="$root/rootfs/$suite${version:+-$version}"
    case "$suite" in
        bookworm | trixie) ;;
        *) script=/usr/share/debootstrap/scripts/sid ;;
    esac
    [ -z "$version" ] || include="python$version,python$version-venv"
    t0="$(now)"
    log "debootstrap $suite${version:+ with python$version} from $mirror (about a minute)"
    rm -rf "$tree"
    mkdir -p "$tree"
    debootstrap --variant=minbase --include="$include,ca-certificates" \
        "$suite" "$tree" "$mirror" ${script:+"$script"} >"$root/debootstrap-$suite.log" 2>&1 ||
        die "debootstrap $suite failed; see $root/debootstrap-$suite.log"
    log "debootstrap $suite done in $(since "$t0") s"
    if [ -n "$version" ]; then
        ln -sf "/usr/bin/python$version" "$tree/usr/local/bin/python"
        ln -sf "/usr/bin/python$version" "$tree/usr/local/bin/python3"
    fi

    # Trust what the host trusts, and use the host's index, for pip inside builds.
    cp /etc/ssl/certs/ca-certificates.crt "$tree/etc/ssl/certs/ca-certificates.crt"
    _aiorun_docker_pip_conf >"$tree/etc/pip.conf"
    # Smaller image: package caches and lists are not needed at run time.
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
        "$tree"/var/log/* "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/tmp/*
    # The tag names the Python the image's `python` really is, as the interpreter reports it.
    pyver="$(chroot "$tree" /usr/bin/env PATH=/usr/local/bin:/usr/bin:/bin \
        python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
        die "python does not run in the $suite tree"
    [ -z "$version" ] || [ "$pyver" = "$version" ] ||
        die "the $suite tree's python is $pyver, not $version"

    t0="$(now)"
    tar --numeric-owner -C "$tree" -cf - . |
        docker -H "$host" import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL org.aiorun-template.python=$pyver org.aiorun-template.suite=$suite" \
            --change 'CMD ["python"]' \
            - "$tag_suite" >/dev/null
    docker -H "$host" tag "$tag_suite" "aiorun-template/python:$pyver"
    rm -rf "$tree"
    log "imported $tag_suite and aiorun-template/python:$pyver in $(since "$t0") s" \
        "($(docker -H "$host" image inspect "$tag_suite" --format '{{.Size}}') bytes)"
}

# Sourced: run in a subshell so `set -e` and the helpers do not leak into the caller's shell,
# then export DOCKER_HOST. Executed: run, then print the line to eval.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    if (_aiorun_docker_main "$@"); then
        if [ "${1:-}" != --stop ]; then
            export DOCKER_HOST="$_aiorun_docker_host"
            printf '[docker-engine] exported DOCKER_HOST=%s\n' "$DOCKER_HOST" >&2
        fi
    else
        printf '[docker-engine] setup failed; DOCKER_HOST left unchanged\n' >&2
        false
    fi
else
    if [ "${1:-}" = --env ]; then
        printf 'export DOCKER_HOST=%s\n' "$_aiorun_docker_host"
        exit 0
    fi
    _aiorun_docker_main "$@"
    [ "${1:-}" = --stop ] || printf 'export DOCKER_HOST=%s\n' "$_aiorun_docker_host"
fi
