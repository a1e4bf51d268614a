#!/usr/bin/env bash
# Set up a machine that has (at most) Docker's client: a virtual environment with cwm-agent in it
# (.venv: Debian's and Ubuntu's own Python is "externally managed" and takes no pip installs), the
# Docker engine, the base sandbox image. Idempotent; needs root (or sudo) for apt and the engine.
#   bash scripts/setup.sh [--test] [--trust-host-ca] [--python-only]
#     --test           also install the test dependencies (pytest, hypothesis, tiktoken, ruff, ray, playwright with
#                      Debian's chromium), fetch Llama 3's
#                      tokenizer.model (CWM's BPE) and build the local SWE-bench instance images the tests use
#     --trust-host-ca  image builds trust this host's CA bundle (TLS-inspecting proxies)
#     --python-only    only the virtual environment and the package (no Docker engine, no images)
# Environment: CWM_AGENT_VENV (default .venv), CWM_AGENT_EXTRAS (default swebench; swebench,test,ray with --test),
# PYTHON (default python3, >= 3.10). pip's own variables (PIP_INDEX_URL, PIP_FIND_LINKS, ...) are honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

test_extras=0
ca_flag=""
python_only=0
for arg in "$@"; do
  case "$arg" in
    --test) test_extras=1 ;;
    --trust-host-ca) ca_flag="--trust-host-ca" ;;
    --python-only) python_only=1 ;;
    *) echo "setup.sh: unknown option $arg (use --test, --trust-host-ca, --python-only)" >&2; exit 2 ;;
  esac
done
if [ "$test_extras" = 1 ]; then default_extras="swebench,test,ray"; else default_extras="swebench"; fi
extras="${CWM_AGENT_EXTRAS-$default_extras}"
venv="${CWM_AGENT_VENV:-.venv}"
python="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  echo "setup: installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. Python >= 3.10 and a virtual environment with the package.
command -v "$python" >/dev/null 2>&1 || apt_install python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: $("$python" --version 2>&1) is too old: cwm-agent needs Python >= 3.10 (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  # Debian and Ubuntu ship venv without ensurepip unless python3-venv (python3.X-venv) is installed.
  if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$minor-venv" || apt_install python3-venv
  fi
  echo "setup: creating the virtual environment $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "setup: installing cwm-agent${extras:+[$extras]} into $venv"
"$venv/bin/python" -m pip install -q -e "$target"

if [ "$python_only" = 0 ]; then
  # 2. The Docker engine (no bridge network: containers get none, image builds use the host's).
  need_pkgs=()
  command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
  if [ ${#need_pkgs[@]} -gt 0 ]; then apt_install "${need_pkgs[@]}"; fi
  if ! docker info >/dev/null 2>&1; then
    echo "setup: starting dockerd (no bridge network)"
    as_root sh -c 'nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/cwm-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/cwm-dockerd.log" >&2; exit 1; }
  fi

  # 3. The base sandbox image; with --test, what the tests need.
  "$venv/bin/cwm-agent" setup $ca_flag
  if [ "$test_extras" = 1 ]; then
    # The token-id tests need CWM's BPE file: taken from the llama-models wheel into ~/.cache/cwm-agent.
    "$venv/bin/python" -m cwm_agent.model.tokenizer fetch
    # The tests evaluate on the local SWE-bench instances: build their images now (seconds when present).
    "$venv/bin/cwm-agent" swebench build-local $ca_flag
    # The report tests open pages in a real browser: Debian's chromium, driven by Playwright through its
    # executable path (Playwright's own browser download is not used).
    command -v chromium >/dev/null 2>&1 || apt_install chromium
  fi
fi

echo "setup: done. Use $venv/bin/cwm-agent, or activate the environment first: source $venv/bin/activate"
