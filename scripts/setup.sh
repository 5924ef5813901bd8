#!/usr/bin/env bash
# Set up a fresh Debian 12 or 13 machine for dagster-nix-builder: Nix (from Debian, when missing), the
# project's virtualenv, and with --test also what the tests drive (Chromium for the UI test).
# Nix settings are never written to the global configuration: the product passes them per call.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v nix-build >/dev/null 2>&1 || apt_packages+=(nix-bin)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || apt_packages+=(python3-pip)
command -v git >/dev/null 2>&1 || apt_packages+=(git)
if [[ "${1:-}" == "--test" ]]; then
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
  # A static shell: the sandbox tests give builders this /bin/sh alone, as Debian 13's Nix does.
  [[ -x /usr/bin/bash-static ]] || apt_packages+=(bash-static)
fi
if ((${#apt_packages[@]})); then
  echo "setup: installing ${apt_packages[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
# The project-local Dagster instance (SQLite) that the README's commands point DAGSTER_HOME at.
mkdir -p .dagster_home
echo "setup: ready ($(nix --version), $(.venv/bin/dagster --version))" >&2
