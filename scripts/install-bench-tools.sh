#!/usr/bin/env bash
# Installs what bench/bench_nginx.py compares serve against: nginx (the reference reverse proxy) and wrk
# (the load generator). Benchmarks are not run in CI; this is run by the benchmark when either is missing.
set -eu
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
