#!/usr/bin/env bash
# Install the Debian 12 packages classroom-agent needs. Idempotent: each package is checked
# with dpkg first, and apt-get runs only when something is missing.
#
#   scripts/deps.sh            everything for development, tests and the demo (default)
#   scripts/deps.sh --runtime  only what a classroom PC needs to run the agent (install.sh)
#   scripts/deps.sh --check    list what is missing, install nothing (exit 1 if anything is)
#
# PYTHON=/path/to/python3 selects the interpreter whose venv support and headers are checked
# (default: python3 on PATH; install.sh passes /usr/bin/python3).
set -euo pipefail

mode=dev
check_only=0
for arg in "$@"; do
    case "$arg" in
        --runtime) mode=runtime ;;
        --dev) mode=dev ;;
        --check) check_only=1 ;;
        -h | --help)
            sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "deps.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

python=${PYTHON:-python3}

# What a classroom PC needs to run the agent:
#   ffmpeg                      the media encoder (next milestone) and ffprobe
#   gcc portaudio19-dev         to build PyAudio, which has no Linux wheel on PyPI
#   mosquitto-clients           mosquitto_sub/pub, for the technician to look at the broker
runtime_pkgs=(ffmpeg gcc portaudio19-dev mosquitto-clients)
# What development, the tests and scripts/demo.sh need on top:
#   mosquitto                   a private broker started by the test fixtures and the demo
#   systemd                     systemd-analyze verify (tests/test_systemd_unit.py)
#   pulseaudio pulseaudio-utils a user-space PulseAudio as a microphone without a sound card
#   sox srt-tools               test tones; SRT receivers for end-to-end stream tests
#   (shellcheck)                lints scripts/ (tests/test_scripts.py)
#   openssl                     test CA and certificates made at run time (tests/test_transport.py)
#   faketime                    libfaketime, to step the wall clock under the agent (tests/faults/)
#   postgresql                  initdb/postgres for the collector tests' own cluster (tests/collector/)
#   prometheus                  promtool check metrics, and a real server scraping the agent
#                               (tests/test_metrics.py)
#   chromium fonts-wqy-microhei headless browser for the pages' tests (driven by Playwright from
#                               PyPI, never `playwright install`) and a CJK font to render them
#   nats-server rabbitmq-server other brokers a region may run: the tests start their own on
#                               free ports (tests/brokers.py, tests/test_brokers.py)
# In dev mode the packages' own services are not started by the install (a temporary
# policy-rc.d): the tests and the demo start their own servers, never the system's.
dev_pkgs=(mosquitto systemd pulseaudio pulseaudio-utils sox srt-tools shellcheck openssl faketime
    postgresql
    prometheus
    chromium fonts-wqy-microhei
    nats-server rabbitmq-server)

wanted=("${runtime_pkgs[@]}")
if [[ $mode == dev ]]; then
    wanted+=("${dev_pkgs[@]}")
fi

# python3-venv / python3-dev only when the chosen interpreter lacks ensurepip / Python.h
# (a pyenv build usually has both; Debian's /usr/bin/python3 has neither without them).
if ! command -v "$python" >/dev/null 2>&1; then
    wanted+=(python3 python3-venv python3-dev)
else
    if ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi
    if ! "$python" -c 'import os, sysconfig
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
        >/dev/null 2>&1; then
        wanted+=(python3-dev)
    fi
fi

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

missing=()
for pkg in "${wanted[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "deps.sh: all ${#wanted[@]} system packages present ($mode)"
    exit 0
fi

if ((check_only)); then
    echo "deps.sh: missing: ${missing[*]}"
    exit 1
fi

if ((EUID != 0)); then
    echo "deps.sh: missing system packages: ${missing[*]}" >&2
    echo "deps.sh: run as root or install: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "deps.sh: installing ${#missing[@]} package(s): ${missing[*]}"
echo "deps.sh: apt-get update"
apt-get update -q
echo "deps.sh: apt-get install ${missing[*]}"
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ $mode == dev && ! -e $policy ]]; then
    printf '#!/bin/sh\n# deps.sh: do not start services while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
fi
# -o Dpkg::Use-Pty=0 keeps the log readable when not on a terminal (CI).
apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"
if ((own_policy)); then
    rm -f "$policy"
    trap - EXIT
fi

still=()
for pkg in "${missing[@]}"; do
    is_installed "$pkg" || still+=("$pkg")
done
if ((${#still[@]})); then
    echo "deps.sh: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi

# Installing Debian's python3-venv/-dev cannot help an interpreter that is not Debian's.
if command -v "$python" >/dev/null 2>&1 && ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
    echo "deps.sh: warning: $($python -c 'import sys; print(sys.executable)') still has no" \
        "ensurepip; 'python3 -m venv' will fail with it (set PYTHON=/usr/bin/python3)" >&2
fi
echo "deps.sh: done"
