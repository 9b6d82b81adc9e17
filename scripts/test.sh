#!/usr/bin/env bash
# The whole test suite, on a fresh machine as on a used one: installs and starts what the tests
# need (they never skip because a tool is absent), then runs every test of the workspace.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
# The Docker provider's tests run real containers.
have docker || need_apt+=(docker.io)
have docker-compose || need_apt+=(docker-compose)
# A real Prometheus (and promtool) for deploy/prometheus and the metrics test.
{ have prometheus && have promtool; } || need_apt+=(prometheus)
# Headless Chromium and its WebDriver for the dashboard test.
have chromium || need_apt+=(chromium)
have chromedriver || need_apt+=(chromium-driver)
# A real TLS client (SNI, ALPN, protocol versions, client certificates) for tests/tls.rs.
have curl || need_apt+=(curl)
# kubectl cross-checks the Kubernetes API fake (tests/kube_fake.rs).
have kubectl || need_apt+=(kubernetes-client)
have python3 || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The package starts a Prometheus service of its own; the tests start theirs.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
    systemctl stop prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true
  fi
fi
# The schema check of deploy/kubernetes (offline: the package ships the schemas) and PyYAML
# for the RBAC test.
have kubernetes-validate || pip install -q kubernetes-validate 2>/dev/null \
  || pip install -q --break-system-packages kubernetes-validate
for t in prometheus promtool chromium chromedriver kubectl kubernetes-validate curl; do
  have "$t" || { echo "$t is still missing after the install; the tests that need it would fail" >&2; exit 1; }
done

# The alerting rules' own unit tests, also run by tests/prometheus.rs.
echo "== promtool test rules deploy/prometheus/rules_test.yml"
promtool check config deploy/prometheus/prometheus.yml >/dev/null
promtool test rules deploy/prometheus/rules_test.yml

# The Docker Engine must answer before the container tests start.
if ! docker info >/dev/null 2>&1; then
  echo "== starting the Docker daemon"
  if have service; then service docker start >/dev/null 2>&1 || true; fi
  if ! docker info >/dev/null 2>&1; then
    (dockerd >/tmp/ebbtide-dockerd.log 2>&1 &)
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "the Docker daemon did not start (see /tmp/ebbtide-dockerd.log)" >&2; exit 1; }
fi

echo "== cargo test --workspace --no-fail-fast"
# --no-fail-fast: one run reports every failing test binary, not only the first.
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

# Plain HTTP/1.1 is served by the native lane by default; the end-to-end files built on the
# common config run again on hyper's HTTP/1.1 server (`[listener] http1 = "hyper"`), so that
# both engines keep passing the same tests (--workspace: the same feature set as above, no rebuild).
echo "== the proxy's end-to-end tests again with [listener] http1 = \"hyper\""
EBBTIDE_TEST_HTTP1=hyper cargo test --workspace --no-fail-fast --test proxy --test malformed --test upstream \
  --test lifecycle --test access_log --test websocket --test per_worker "$@" || status=$?
exit $status
