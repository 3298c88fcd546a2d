#!/usr/bin/env bash
# Deploy the GPU flavour of every polypseg CVAT function (see deploy.sh).
exec "$(dirname "${BASH_SOURCE[0]}")/deploy.sh" gpu
