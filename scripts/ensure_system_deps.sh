#!/usr/bin/env bash
# Install the Debian packages the project needs, but only those whose command is missing, so
# `make setup` can call this on every run: silent and instant when everything is there.
#
# Usage: scripts/ensure_system_deps.sh [python] [services] [browser] [deploy]  (none: services)
#   python    python3 and python3-venv (Debian's python3 has no venv/ensurepip without it)
#   services  redis-server (tests and `make dev` start private ones) and ffmpeg (pydub decodes)
#   browser   chromium, which the Playwright tests drive (`make test`; never `playwright install`)
#   deploy    nginx (the reverse proxy of `make prod-local` and its tests), promtool (checks the
#             alert rules; Debian ships it in `prometheus`) and systemd-analyze (verifies units)
set -euo pipefail

missing=()

# need_cmd COMMAND PACKAGE: queue PACKAGE when COMMAND is not on PATH.
need_cmd() {
    if ! command -v "$1" >/dev/null 2>&1; then
        missing+=("$2")
    fi
}

groups=("$@")
if [[ ${#groups[@]} -eq 0 ]]; then
    groups=(services)
fi

for group in "${groups[@]}"; do
    case $group in
        python)
            need_cmd python3 python3
            # `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
            if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
                missing+=(python3-venv)
            fi
            ;;
        services)
            need_cmd redis-server redis-server
            need_cmd ffmpeg ffmpeg
            # Renders real speech for the analysis accuracy tests (they skip without it).
            need_cmd espeak-ng espeak-ng
            ;;
        browser)
            need_cmd chromium chromium
            ;;
        deploy)
            # /usr/sbin is not on every user's PATH; nginx lives there.
            [[ -x /usr/sbin/nginx ]] || need_cmd nginx nginx
            need_cmd promtool prometheus
            need_cmd systemd-analyze systemd
            ;;
        *)
            echo "ensure_system_deps: unknown group '$group' (python|services|browser|deploy)" >&2
            exit 2
            ;;
    esac
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_system_deps: missing ${missing[*]} and no apt-get here; install them yourself" >&2
    exit 1
fi

# Root installs directly; anyone else goes through sudo. `env` passes DEBIAN_FRONTEND through
# sudo whatever its env_reset policy is.
as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "ensure_system_deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)

echo "==> installing Debian packages: ${missing[*]}"
# One index refresh per run: a fresh machine (or container) has an empty or stale index.
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"

# Fail here, with a clear message, rather than later in a test or a Procfile process.
still_missing=()
for group in "${groups[@]}"; do
    case $group in
        python)
            python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || still_missing+=(python3-venv)
            ;;
        services)
            command -v redis-server >/dev/null 2>&1 || still_missing+=(redis-server)
            command -v ffmpeg >/dev/null 2>&1 || still_missing+=(ffmpeg)
            ;;
        browser)
            command -v chromium >/dev/null 2>&1 || still_missing+=(chromium)
            ;;
        deploy)
            [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || still_missing+=(nginx)
            command -v promtool >/dev/null 2>&1 || still_missing+=(prometheus)
            command -v systemd-analyze >/dev/null 2>&1 || still_missing+=(systemd)
            ;;
    esac
done
if [[ ${#still_missing[@]} -gt 0 ]]; then
    echo "ensure_system_deps: still missing after apt-get install: ${still_missing[*]}" >&2
    exit 1
fi
