#!/usr/bin/env bash
# Installs the test-only multipart parsers that tests/test_multipart_differential.py compares ours against:
# Ruby Rack, Go's mime/multipart, PHP, and (npm) busboy; Node's own Request.formData() needs only node.
# Also Debian's chromium, which Playwright drives for the review page tests (tests/test_review.py):
# `playwright install` downloads its own browsers, which fails offline, so the system's is used.
# Idempotent and quick when all is installed. Never fails the build: a registry that cannot be reached is
# reported and skipped, and the differential tests then skip that parser with a reason.
set -u
cd "$(dirname "$0")/.."

note() { printf 'install-test-tools: %s\n' "$*" >&2; }

apt_packages=()
command -v ruby >/dev/null && ruby -e 'require "rack"' 2>/dev/null || apt_packages+=(ruby-rack)
command -v go >/dev/null || apt_packages+=(golang-go)
command -v php >/dev/null || apt_packages+=(php-cli)
command -v node >/dev/null || apt_packages+=(nodejs npm)
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)

if [ ${#apt_packages[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        note "no apt-get here: install ${apt_packages[*]} yourself; their tests will skip"
    else
        sudo=""
        [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo -n"
        export DEBIAN_FRONTEND=noninteractive
        if ! $sudo apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=0 -o Acquire::http::Timeout=20 install -y --no-install-recommends "${apt_packages[@]}" >/dev/null 2>&1; then
            note "apt-get install failed; trying once more after apt-get update"
            $sudo apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=0 -o Acquire::http::Timeout=20 update >/dev/null 2>&1 || note "apt-get update failed (no network?)"
            $sudo apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=0 -o Acquire::http::Timeout=20 install -y --no-install-recommends "${apt_packages[@]}" >/dev/null 2>&1 \
                || note "could not install ${apt_packages[*]}; those parsers' tests will skip"
        fi
    fi
fi

if command -v npm >/dev/null; then
    node_dir=tests/parsers/node
    if [ ! -d "$node_dir/node_modules/busboy" ] || [ ! -d "$node_dir/node_modules/@fastify/busboy" ] || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
        (cd "$node_dir" && npm ci --no-audit --no-fund --ignore-scripts --prefer-offline --fetch-retries=1 --fetch-timeout=30000 >/dev/null 2>&1) \
            || note "npm ci in $node_dir failed (registry unreachable?); busboy's tests will skip"
    fi
else
    note "no npm: busboy's tests will skip"
fi

if command -v go >/dev/null; then
    # the differential tests build this too; building here keeps the first test run quick (offline: stdlib only)
    (cd tests/parsers/go && GOCACHE="$PWD/../.build/gocache" GOFLAGS=-mod=mod GOPROXY=off go build -o ../.build/go-multipart .) \
        || note "go build of tests/parsers/go failed; the go tests will say why"
fi

# playwright is a test dependency in pyproject.toml; install it here too for a venv made before it was
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
    .venv/bin/python -m pip install -q "playwright>=1.45" >/dev/null 2>&1 \
        || note "pip install playwright failed; the review page's browser test will skip"
fi

[ -x /usr/bin/chromium ] && note "chromium: /usr/bin/chromium" || note "chromium: missing (the browser test will skip)"
for tool in ruby go php node; do
    command -v "$tool" >/dev/null && note "$tool: $(command -v "$tool")" || note "$tool: missing"
done
exit 0
