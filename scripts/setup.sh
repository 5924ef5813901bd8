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
# A PostgreSQL server for dagster-postgres' check (its own cluster in the build, on loopback); the bootstrap
# scope borrows /usr/lib/postgresql/<major>/bin (Debian 12: 15, Debian 13: 17).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || apt_packages+=(postgresql)
if [[ "${1:-}" == "--test" ]]; then
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
  # A static shell: the sandbox tests give builders this /bin/sh alone, as Debian 13's Nix does.
  [[ -x /usr/bin/bash-static ]] || apt_packages+=(bash-static)
  # A real static HTTP server: the tests serve the binary cache on loopback with it (their own instance).
  [[ -x /usr/sbin/nginx ]] || apt_packages+=(nginx)
fi
if ((${#apt_packages[@]})); then
  echo "setup: installing ${apt_packages[*]} from Debian" >&2
  apt-get update -qq
  # Installing nginx or postgresql must not start (and enable) the system's nginx on port 80 or PostgreSQL's
  # cluster on 5432: the tests and checks run their own instances on loopback. Where nothing forbids services
  # to start (no policy-rc.d), forbid it for this install.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT  # also if the install fails
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# With the dg CLI (dg dev, dg launch, dg check defs, dg list defs) in the same resolution, so pip picks a
# Dagster release that has its dg CLI (they pin each other's dagster-shared); then the dg CLI is pinned to the
# installed Dagster's own version.
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' 'dagster-dg-cli>=1.13,<1.14'
dagster_version=$(.venv/bin/python -c 'import dagster; print(dagster.__version__)')
dg_version=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("dagster-dg-cli"))')
if [[ "$dg_version" != "$dagster_version" ]]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "dagster-dg-cli==$dagster_version"
fi

# One instance for every run: Dagster's and dg's CLIs read ./.env before they pick the instance, so runs of
# `dg launch` and what `dg dev` shows land in the project-local .dagster_home (SQLite). An exported
# DAGSTER_HOME still wins. Other lines of an existing .env are kept.
mkdir -p .dagster_home
[[ -f .dagster_home/dagster.yaml ]] || : > .dagster_home/dagster.yaml  # defaults; silences "no dagster.yaml"
home_line="DAGSTER_HOME=\${DAGSTER_HOME:-$PWD/.dagster_home}"
{ if [[ -f .env ]]; then grep -v '^DAGSTER_HOME=' .env || true; fi; echo "$home_line"; } > .env.setup-tmp
mv .env.setup-tmp .env
echo "setup: ready ($(nix --version), $(.venv/bin/dagster --version), $(.venv/bin/dg --version))" >&2
