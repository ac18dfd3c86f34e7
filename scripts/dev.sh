#!/usr/bin/env bash
# Run the whole local stack under honcho (Procfile.dev). `make dev` calls this after `make setup`,
# so .venv, redis-server and ffmpeg are there. Settings: the environment wins over .env.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_BIN=$PWD/.venv/bin

# Remember what the caller set explicitly, before .env fills the gaps (see the port fix-ups).
declare -A from_env=()
for name in ANALYSIS_PORT ANALYSIS_SERVER_URL S3_PORT S3_ENDPOINT_URL; do
    if [[ -n ${!name+set} ]]; then
        from_env[$name]=1
    fi
done

# Export KEY=value lines of an env file, skipping keys already in the environment. Not `source`:
# that would let .env override the environment and run whatever the file contains.
load_env_file() {
    local file=$1 line key value
    [[ -f $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        line=${line#export }
        if [[ $line != *=* ]]; then
            echo "dev.sh: ignoring malformed line in $file: $line" >&2
            continue
        fi
        key=${line%%=*}
        key=${key//[[:space:]]/}
        value=${line#*=}
        if [[ ! $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
            echo "dev.sh: ignoring malformed line in $file: $line" >&2
            continue
        fi
        # Strip one pair of matching surrounding quotes, as dotenv readers do.
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        if [[ -z ${!key+set} ]]; then
            export "$key=$value"
        fi
    done <"$file"
}
load_env_file .env

# Defaults for anything .env does not set (the same as config.py's).
export API_HOST=${API_HOST:-127.0.0.1}
export API_PORT=${API_PORT:-8000}
export ANALYSIS_PORT=${ANALYSIS_PORT:-8001}
export S3_PORT=${S3_PORT:-9000}
export FLOWER_PORT=${FLOWER_PORT:-5555}
export FLOWER_BASIC_AUTH=${FLOWER_BASIC_AUTH:-yousync:local-only}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export S3_BUCKET=${S3_BUCKET:-yousync-audio}
# A port moved from the environment without its URL would point the worker at the old port.
if [[ -n ${from_env[ANALYSIS_PORT]:-} && -z ${from_env[ANALYSIS_SERVER_URL]:-} ]]; then
    export ANALYSIS_SERVER_URL=http://127.0.0.1:$ANALYSIS_PORT
fi
if [[ -n ${from_env[S3_PORT]:-} && -z ${from_env[S3_ENDPOINT_URL]:-} ]]; then
    export S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
fi
export ANALYSIS_SERVER_URL=${ANALYSIS_SERVER_URL:-http://127.0.0.1:$ANALYSIS_PORT}
export S3_ENDPOINT_URL=${S3_ENDPOINT_URL:-http://127.0.0.1:$S3_PORT}
# Python children print through a pipe to honcho: unbuffered, or logs arrive late.
export PYTHONUNBUFFERED=1
mkdir -p var

# Does a Redis answer at REDIS_URL? Prints "up", "down HOST PORT" or "error MESSAGE". Python, not
# redis-cli, so passwords, TLS and db numbers in the URL are handled like the app handles them.
redis_state=$("$VENV_BIN/python" - "$REDIS_URL" <<'PY'
import sys
from urllib.parse import urlsplit

import redis

url = sys.argv[1]
parts = urlsplit(url)
try:
    redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping()
    print("up")
except (redis.ConnectionError, redis.TimeoutError) as exc:
    # A refused connection means nothing listens; an auth error means someone does.
    if isinstance(exc, redis.AuthenticationError):
        print(f"error {exc}")
    else:
        print(f"down {parts.hostname or '127.0.0.1'} {parts.port or 6379}")
except redis.RedisError as exc:
    print(f"error {exc}")
PY
)

procs=()
case $redis_state in
    up)
        echo "dev.sh: reusing the Redis that answers at $REDIS_URL"
        ;;
    down\ *)
        read -r _ redis_host redis_port <<<"$redis_state"
        case $redis_host in
            127.0.0.1 | localhost | ::1) ;;
            *)
                echo "dev.sh: no Redis answers at $REDIS_URL and it is not local; start it" \
                    "or point REDIS_URL at a loopback port" >&2
                exit 1
                ;;
        esac
        echo "dev.sh: no Redis at $REDIS_URL: starting redis-server on port $redis_port"
        export REDIS_BIND=127.0.0.1 REDIS_PORT=$redis_port
        if [[ $redis_host == "::1" ]]; then
            REDIS_BIND=::1
        fi
        procs+=(redis)
        ;;
    *)
        echo "dev.sh: a server answers at $REDIS_URL but not as expected: ${redis_state#error }" >&2
        exit 1
        ;;
esac
procs+=(s3 analysis worker callbacks beat flower api ready)

# Honcho's `-e FILE` would let the file override the environment, so the settings merged above
# are exported instead and honcho gets an empty env file.
cmd=("$VENV_BIN/honcho" start -f Procfile.dev -e /dev/null "${procs[@]}")
# DEV_DRY_RUN=1 shows the decision without starting anything (used to test this script).
if [[ -n ${DEV_DRY_RUN:-} ]]; then
    echo "dev.sh: would run: ${cmd[*]}"
    env | grep -E '^(API_|ANALYSIS_|S3_|FLOWER_PORT|REDIS_)' | sort
    exit 0
fi
exec "${cmd[@]}"
