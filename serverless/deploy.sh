#!/usr/bin/env bash
# Deploy every polypseg CVAT function into CVAT's nuclio, as CVAT's own serverless/deploy_*.sh
# do: `deploy.sh cpu` uses each function.yaml, `deploy.sh gpu` each function-gpu.yaml.
# Run beside a running CVAT (docker compose -f docker-compose.yml -f
# components/serverless/docker-compose.serverless.yml up -d) with nuctl on the PATH.
# CVAT_NUCLIO_NETWORK (default cvat_cvat) is CVAT's docker network; CVAT_REDIS_HOST /
# CVAT_REDIS_PORT / CVAT_REDIS_PASSWORD (default: CVAT's cvat_redis_inmem:6379) keep tracker
# states so that any worker can continue a track. PYTHON (default python3) builds the wheel.
# Everything it builds lives in a temporary folder, removed on exit.
set -euo pipefail
flavour="${1:?usage: deploy.sh cpu|gpu}"
case "$flavour" in
    cpu) file=function.yaml ;;
    gpu) file=function-gpu.yaml ;;
    *) echo "usage: deploy.sh cpu|gpu" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"

# What it needs, checked before anything is built.
missing=()
command -v nuctl >/dev/null || missing+=("nuctl, nuclio's CLI, of the version CVAT's components/serverless/docker-compose.serverless.yml runs (a release binary from https://github.com/nuclio/nuclio/releases, on the PATH)")
command -v docker >/dev/null || missing+=("docker (nuctl --platform local builds and runs the functions with it)")
if ! "$python" - 2>/dev/null <<'CHECK'
import sys
import setuptools, wheel  # noqa: F401
sys.exit(int(setuptools.__version__.split(".")[0]) < 69)
CHECK
then
    missing+=("pip, setuptools>=69 and wheel for $python, to build the polypseg wheel: $python -m pip install --upgrade pip 'setuptools>=69' wheel (or PYTHON=.venv/bin/python $0 $flavour)")
fi
if ((${#missing[@]})); then
    echo "deploy.sh: nothing was built or deployed; first install:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -rf "$here"/*/wheels' EXIT
# polypseg (the core, its shipped model, and backends.cvat) as a wheel each function installs,
# built from a copy so that setuptools' build/ and *.egg-info stay out of the checkout.
mkdir "$work/src" "$work/wheels"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/polypseg" "$root/backends" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/wheels" "$work/src"
cp "$root/constraints.txt" "$work/wheels/"  # what it pulls in, at the versions CI tested

nuctl create project cvat --platform local 2>/dev/null || true
for config in "$here"/*/"$file"; do
    function_dir="$(dirname "$config")"
    rm -rf "$function_dir/wheels" && cp -r "$work/wheels" "$function_dir/wheels"
    echo "Deploying $(basename "$function_dir") ($flavour) ..."
    nuctl deploy --project-name cvat --path "$function_dir" --file "$config" --platform local \
        --env CVAT_REDIS_HOST="${CVAT_REDIS_HOST:-cvat_redis_inmem}" \
        --env CVAT_REDIS_PORT="${CVAT_REDIS_PORT:-6379}" \
        --env CVAT_REDIS_PASSWORD="${CVAT_REDIS_PASSWORD:-}" \
        --platform-config "{\"attributes\":{\"network\":\"${CVAT_NUCLIO_NETWORK:-cvat_cvat}\"}}"
    rm -rf "$function_dir/wheels"
done
nuctl get function --platform local
