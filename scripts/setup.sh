#!/usr/bin/env bash
# Set up a machine that has (at most) Docker's client: install and start the engine, install
# cwm-agent, build the base sandbox image. Idempotent; needs root for the engine and debootstrap.
#   bash scripts/setup.sh [--test] [--trust-host-ca]
#     --test           also install the test dependencies (pytest, hypothesis, tiktoken, ray, playwright + Debian's
#                      chromium), fetch Llama 3's
#                      tokenizer.model (CWM's BPE) and build the local SWE-bench instance images the tests use
#     --trust-host-ca  image builds trust this host's CA bundle (TLS-inspecting proxies)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="swebench"
ca_flag=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="swebench,test,ray" ;;
    --trust-host-ca) ca_flag="--trust-host-ca" ;;
    *) echo "setup.sh: unknown option $arg (use --test, --trust-host-ca)" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd (no bridge network)"
  as_root sh -c 'nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/cwm-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/cwm-dockerd.log" >&2; exit 1; }
fi

echo "setup: installing cwm-agent[$extras]"
python3 -m pip install -q -e ".[$extras]"

cwm-agent setup $ca_flag
if [ "$extras" = "swebench,test,ray" ]; then
  # The token-id tests need CWM's BPE file: taken from the llama-models wheel into ~/.cache/cwm-agent.
  python3 -m cwm_agent.model.tokenizer fetch
  # The report tests open pages in a real browser: Debian's chromium, driven by Playwright through its
  # executable path (Playwright's own browser download is not used).
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium (report tests)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  # The tests evaluate on the local SWE-bench instances: build their images now (seconds when present).
  cwm-agent swebench build-local $ca_flag
fi
