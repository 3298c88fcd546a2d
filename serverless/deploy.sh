#!/usr/bin/env bash
# Deploy every polypseg CVAT function into CVAT's nuclio, as CVAT's own serverless/deploy_*.sh
# do: `deploy.sh cpu` uses each function.yaml, `deploy.sh gpu` each function-gpu.yaml.
# Run beside a running CVAT (docker compose -f docker-compose.yml -f
# components/serverless/docker-compose.serverless.yml up -d) with nuctl on the PATH.
# CVAT_NUCLIO_NETWORK (default cvat_cvat) is CVAT's docker network; CVAT_REDIS_HOST /
# CVAT_REDIS_PORT / CVAT_REDIS_PASSWORD (default: CVAT's cvat_redis_inmem:6379) keep tracker
# states so that any worker can continue a track.
set -euo pipefail
flavour="${1:?usage: deploy.sh cpu|gpu}"
case "$flavour" in
    cpu) file=function.yaml ;;
    gpu) file=function-gpu.yaml ;;
    *) echo "usage: deploy.sh cpu|gpu" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT

# polypseg (the core, its shipped model, and backends.cvat) as a wheel each function installs.
python3 -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$wheels" "$root"

nuctl create project cvat --platform local 2>/dev/null || true
for config in "$here"/*/"$file"; do
    function_dir="$(dirname "$config")"
    rm -rf "$function_dir/wheels" && cp -r "$wheels" "$function_dir/wheels"
    echo "Deploying $(basename "$function_dir") ($flavour) ..."
    nuctl deploy --project-name cvat --path "$function_dir" --file "$config" --platform local \
        --env CVAT_REDIS_HOST="${CVAT_REDIS_HOST:-cvat_redis_inmem}" \
        --env CVAT_REDIS_PORT="${CVAT_REDIS_PORT:-6379}" \
        --env CVAT_REDIS_PASSWORD="${CVAT_REDIS_PASSWORD:-}" \
        --platform-config "{\"attributes\":{\"network\":\"${CVAT_NUCLIO_NETWORK:-cvat_cvat}\"}}"
    rm -rf "$function_dir/wheels"
done
nuctl get function --platform local
