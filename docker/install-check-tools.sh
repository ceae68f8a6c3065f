#!/usr/bin/env bash
# The tools tests/deploy/test_deploy.py needs that pip cannot provide (hadolint comes
# from pyproject's dev extra):
#   prometheus, promtool  from Debian's `prometheus` package, unpacked into
#                         .cache/tools/bin rather than installed: its maintainer
#                         scripts would add a system user and may start a
#                         daemon on :9090 (the tests start their own, on a free port)
#   docker-compose        Debian's package (1.29): validates docker-compose.yml
#                         without a Docker engine
#   chromium,             Debian's headless browser and its WebDriver, for the
#   chromium-driver       try-it page test (tests/server/http/test_http_page.py, via Selenium)
#   redis-server          the GCS store of the head-kill test (tests/server/cluster/test_cluster_ha.py);
#                         the test starts its own inside a network namespace
# Run by `make test`. Idempotent: once present, it only checks. Without apt (or
# root where an install is needed) it says what is missing and exits 0; the
# tests that need the tool then skip with the same reason.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/tools/bin"
updated=0

say() { echo "install-check-tools: $*"; }
is_root() { [ "$(id -u)" = 0 ]; }

apt_update_once() {
    if [ "$updated" = 0 ] && is_root; then
        apt-get update -qq
        updated=1
    fi
}

install_prometheus() {
    if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ]; then
        return
    fi
    if ! command -v apt-get > /dev/null || ! command -v dpkg-deb > /dev/null; then
        say "no apt-get/dpkg-deb: Prometheus tests will skip"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    chmod 0777 "$tmp"  # apt downloads as its unprivileged _apt user
    if ! (cd "$tmp" && apt-get download -qq prometheus 2> /dev/null); then
        apt_update_once
        if ! (cd "$tmp" && apt-get download -qq prometheus); then
            say "cannot download Debian's prometheus package: Prometheus tests will skip"
            rm -rf "$tmp"
            return
        fi
    fi
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
    mkdir -p "$bin"
    install -m 0755 "$tmp/root/usr/bin/prometheus" "$tmp/root/usr/bin/promtool" "$bin/"
    rm -rf "$tmp"
    say "$("$bin/prometheus" --version 2>&1 | head -n 1) -> $bin"
}

# apt_install WHAT PACKAGE...: install Debian packages as root, or say what will skip.
apt_install() {
    local what="$1"
    shift
    if ! command -v apt-get > /dev/null || ! is_root; then
        say "$what missing and not root with apt-get: its tests will skip"
        return 1
    fi
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}

install_compose() {
    if command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1; then
        return
    fi
    apt_install docker-compose docker-compose || return 0
    say "$(docker-compose version --short) installed"
}

install_chromium() {
    if command -v chromium > /dev/null && command -v chromedriver > /dev/null; then
        return
    fi
    apt_install "chromium/chromedriver (the browser test)" chromium chromium-driver || return 0
    say "$(chromium --version 2> /dev/null | head -n 1) installed"
}

install_redis() {
    if command -v redis-server > /dev/null; then
        return
    fi
    apt_install "redis-server (the cluster's head-kill test)" redis-server || return 0
    # Debian's package starts a daemon on 127.0.0.1:6379: the test needs none of it.
    if command -v systemctl > /dev/null; then systemctl disable --now redis-server 2> /dev/null || true; fi
    say "$(redis-server --version | head -n 1) installed"
}

install_prometheus
install_compose
install_chromium
install_redis
