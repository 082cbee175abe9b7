#!/usr/bin/env bash
# The CPU flagship, pipelines/smollm2-flagship-short.ron, end to end in one process (about two hours
# on 2 cores), measured as scripts/bench-flagship.sh measures the flagship (same environment).
exec env FLAGSHIP=smollm2-flagship-short bash "$(dirname "$0")/bench-flagship.sh" "$@"
