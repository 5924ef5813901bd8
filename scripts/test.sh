#!/usr/bin/env bash
# The test suite in both worlds, as the README's test command and CI run it:
#   1. on this host (Debian 12: Nix 2.8, sandbox off; or Debian 13: Nix 2.26, sandbox on),
#   2. inside a root of the other Debian release (scripts/debian-root.sh), with that release's own Nix
#      and Python and its default nix.conf (Debian 13's has sandbox = true).
# Both run the whole suite, slow and browser tests included; pytest arguments are passed to both.
# Prints each world's pytest summary and one closing line; fails if either failed.
#
#   scripts/test.sh                 both worlds
#   DNB_WORLDS=host scripts/test.sh one world (host | other)
set -uo pipefail
cd "$(dirname "$0")/.."

worlds=${DNB_WORLDS:-host other}
results=.test-results
mkdir -p "$results"
declare -A status summary

describe() { echo "Debian $(cat /etc/debian_version), $(nix --version 2>/dev/null), Python $(/usr/bin/python3 -c 'import platform; print(platform.python_version())')"; }

run_world() {  # name, command...
  local name=$1 log="$results/$1.log" start=$SECONDS
  shift
  echo "=== tests: $name ===" >&2
  "$@" 2>&1 | tee "$log"
  status[$name]=${PIPESTATUS[0]}
  summary[$name]="$(grep -aE '^=* ?[0-9]+ (passed|failed|errors?|skipped|deselected).* in [0-9.]+s' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//') ($((SECONDS - start)) s wall)"
}

for world in $worlds; do
  case $world in
    host)
      run_world host bash -c 'echo "world: $0"; .venv/bin/python -m pytest -ra "$@"' "$(describe)" "$@" ;;
    other)
      # Set-up inside the root is the same command a user runs on a fresh machine of that release.
      run_world other scripts/debian-root.sh run bash -c \
        'echo "world: Debian $(cat /etc/debian_version), $(nix --version), Python $(python3 -V | cut -d" " -f2), $(grep -h "^sandbox" /etc/nix/nix.conf || echo "sandbox unset")"
         scripts/setup.sh --test && .venv/bin/python -m pytest -ra "$@"' other-world "$@" ;;  # other-world: bash -c's $0
    *) echo "scripts/test.sh: unknown world '$world' in DNB_WORLDS (host, other)" >&2; exit 2 ;;
  esac
done

count() { grep -oE "[0-9]+ ($1)" | awk '{n += $1} END {print n + 0}'; }
passed=0 failed=0 skipped=0 rc=0
echo
for world in $worlds; do
  echo "$world: ${summary[$world]:-no pytest summary} (exit ${status[$world]})"
  line=${summary[$world]:-}
  passed=$((passed + $(count passed <<<"$line")))
  failed=$((failed + $(count 'failed|errors?' <<<"$line")))
  skipped=$((skipped + $(count skipped <<<"$line")))
  if [[ ${status[$world]} != 0 ]]; then
    rc=1
    [[ -n $line ]] || failed=$((failed + 1))  # a world that ended before pytest reported counts as a failure
  fi
done
echo "total: $passed passed, $failed failed, $skipped skipped"
exit "$rc"
