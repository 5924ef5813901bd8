#!/usr/bin/env bash
# A second Debian root for tests: the OTHER Debian release than the host (trixie on a bookworm host,
# bookworm on a trixie host), made with debootstrap and entered with chroot, so the product is tried
# against the other release's Nix/Python and (on trixie) Nix's default `sandbox = true`.
#
#   scripts/debian-root.sh ensure            create (or reuse) <repo>/.debian-root/<codename>/
#   scripts/debian-root.sh run [--] CMD...   copy the working tree to /work/main inside, run CMD there
#   scripts/debian-root.sh shell             like run, with `bash -l`
#   scripts/debian-root.sh destroy           unmount leftovers and delete the root
#
# Nothing here edits Nix's configuration inside the root: the product must work with Debian's defaults.
set -euo pipefail

HOME=${HOME:-/root}
script=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(cd "$(dirname "$script")/.." && pwd -P)

die() { echo "debian-root: error: $*" >&2; exit 1; }
say() { echo "debian-root: $*" >&2; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot and mount need it)"

# --- which release ----------------------------------------------------------------------------------
host_codename() {
  local codename=""
  if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  fi
  if [[ -z $codename && -r /etc/debian_version ]]; then
    case $(cat /etc/debian_version) in
      12.* | bookworm*) codename=bookworm ;;
      13.* | trixie*) codename=trixie ;;
    esac
  fi
  echo "$codename"
}
host=$(host_codename)
case $host in
  bookworm) target=trixie ;;
  trixie) target=bookworm ;;
  *) die "host release '${host:-unknown}' is neither bookworm nor trixie: no 'other' release defined" ;;
esac

base="$repo/.debian-root"
root="$base/$target"
stamp="$root/.debian-root-stamp"  # holds the sha256 of this script once a creation has finished
lockfile="$base/$target.lock"     # outside the root, so destroy does not delete it under a waiter
# Kept inside the root between runs so repeated runs are fast (its own venv, instance, out-links).
keep_in_project=(.venv .dagster_home .nix-results)

script_sha() { sha256sum "$script" | cut -d' ' -f1; }

# --- mounts -----------------------------------------------------------------------------------------
# Mount points at or below the root, in mount order (mountinfo escapes blanks as \040).
mounts_below_root() {
  local target
  while read -r _ _ _ _ target _; do
    target=$(printf '%b' "$target")
    if [[ $target == "$root" || $target == "$root"/* ]]; then echo "$target"; fi
  done </proc/self/mountinfo
}

# Processes whose root directory is inside ours: anything still running from an earlier/killed run.
pids_in_root() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    if [[ $r == "$root" || $r == "$root"/* ]]; then echo "${p#/proc/}"; fi
  done
}

kill_in_root() {
  local pids
  mapfile -t pids < <(pids_in_root)
  ((${#pids[@]})) || return 0
  say "stopping ${#pids[@]} process(es) left inside the root"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  # Give Nix a moment to stop its sandboxed builders itself, then force.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    mapfile -t pids < <(pids_in_root)
    ((${#pids[@]})) || return 0
    sleep 0.5
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 0.5
}

unmount_all() {
  local targets t
  kill_in_root
  # Reverse mount order unmounts children before parents; retry a few rounds for stacked mounts.
  for _ in 1 2 3; do
    mapfile -t targets < <(mounts_below_root | tac)
    ((${#targets[@]})) || return 0
    for t in "${targets[@]}"; do umount "$t" 2>/dev/null || true; done
  done
  mapfile -t targets < <(mounts_below_root)
  ((${#targets[@]})) || return 0
  say "lazy-unmounting what is still busy: ${targets[*]}"
  umount -R -l "$root" 2>/dev/null || true
  for t in $(mounts_below_root | tac); do umount -l "$t" 2>/dev/null || true; done
  mapfile -t targets < <(mounts_below_root)
  ((${#targets[@]} == 0)) || die "could not unmount: ${targets[*]}"
}

# Deleting the root must never reach through a mount into the host (/dev, /opt/...).
remove_root() {
  unmount_all
  [[ -z $(mounts_below_root) ]] || die "refusing to delete $root: something is still mounted below it"
  rm -rf --one-file-system "$root"
}

# --- host facts read at run time ----------------------------------------------------------------------
# The Debian mirror the host's apt uses for its own release (never written into the repo).
host_mirror() {
  local f uri="" types="" suites="" enabled="" line key value
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    # deb822: blank-line separated stanzas; take the first URI of a `deb` stanza with the host's suite.
    while IFS= read -r line || [[ -n $line ]]; do
      if [[ -z ${line//[[:space:]]/} ]]; then
        if [[ " $types " == *" deb "* && " $suites " == *" $host "* && $enabled != no && -n $uri ]]; then
          echo "${uri%% *}"; return 0
        fi
        uri="" types="" suites="" enabled=""
        continue
      fi
      [[ $line == \#* || $line != *:* ]] && continue
      key=${line%%:*} value=${line#*:}
      value=$(echo "$value" | xargs)
      case ${key,,} in
        types) types=$value ;; uris) uri=$value ;; suites) suites=$value ;; enabled) enabled=${value,,} ;;
      esac
    done < <(cat "$f"; echo)
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # one-line format: deb [options] URI SUITE COMPONENTS...
    line=$(sed -E 's/\[[^]]*\]//' "$f" | awk -v s="$host" '$1 == "deb" && $3 == s { print $2; exit }')
    if [[ -n $line ]]; then echo "$line"; return 0; fi
  done
  return 1
}

apt_install_host() {  # apt_install_host PACKAGE COMMAND
  command -v "$2" >/dev/null 2>&1 && return 0
  say "installing $1 on the host from Debian"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; } ||
    die "could not install the Debian package '$1' on the host (apt-get install $1); it is needed for $2"
}

# The host's pip configuration files, as (host path) lines; the root gets them at the same paths,
# with the caller's user config going to /root (HOME inside).
pip_config_files() {
  local f
  for f in /etc/pip.conf /etc/xdg/pip/pip.conf "${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf" \
    "$HOME/.pip/pip.conf" "${PIP_CONFIG_FILE:-}"; do
    [[ -n $f && -f $f ]] && echo "$f"
  done
  return 0
}

# Local folders/files that the pip configuration or PIP_* variables name (find-links, file:// indexes,
# constraint files...): these are bind-mounted read-only at the same path inside during `run`.
pip_local_paths() {
  local f values=() v p var
  while IFS= read -r f; do
    # every value of every `key = value` line; values may be whitespace-separated lists
    while IFS= read -r v; do values+=("$v"); done < <(sed -nE 's/^[[:space:]]*[A-Za-z0-9_-]+[[:space:]]*[=:][[:space:]]*//p' "$f")
  done < <(pip_config_files)
  for var in $(compgen -e); do
    [[ $var == PIP_* ]] && values+=("${!var}")
  done
  for v in "${values[@]}"; do
    for p in $v; do
      p=${p#file://}
      [[ $p == /* ]] || continue
      # A PEP 503 index links ../../files/...: make the index's parent folder visible too.
      [[ ${p%/} == */simple ]] && p=$(dirname "${p%/}")
      # /etc and /usr are the root's own (its CA bundle, the copied pip config): never shadow them.
      case $p in /etc | /etc/* | /usr | /usr/* | /proc* | /sys* | /dev* | /) continue ;; esac
      [[ -e $p ]] && readlink -f "$p"
    done
  done | sort -u
}

# Copy the host's pip configuration and extra CA certificates into the root (cheap; done on each
# ensure so a change on the host reaches the root without a rebuild).
sync_host_config() {
  local f dest changed=0 old new
  while IFS= read -r f; do
    case $f in
      "$HOME"/*) dest="$root/root/${f#"$HOME"/}" ;;
      *) dest="$root$f" ;;
    esac
    mkdir -p "$(dirname "$dest")"
    cp -f "$f" "$dest"
  done < <(pip_config_files)
  if [[ -d /etc/xdg/pip ]]; then
    mkdir -p "$root/etc/xdg"
    rm -rf "$root/etc/xdg/pip"
    cp -a /etc/xdg/pip "$root/etc/xdg/pip"
  fi
  # Extra CAs (e.g. a proxy's): the root's bundle is rebuilt from Debian's plus these.
  old=$(cd "$root/usr/local/share/ca-certificates" 2>/dev/null && find . -type f -print0 | sort -z | xargs -0r sha256sum)
  new=$(cd /usr/local/share/ca-certificates 2>/dev/null && find . -type f -print0 | sort -z | xargs -0r sha256sum)
  if [[ $old != "$new" ]]; then changed=1; fi
  if ((changed)) || [[ ! -s $root/etc/ssl/certs/ca-certificates.crt ]]; then
    rm -rf "$root/usr/local/share/ca-certificates"
    mkdir -p "$root/usr/local/share/ca-certificates"
    if [[ -d /usr/local/share/ca-certificates ]]; then
      cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    fi
    chroot "$root" /usr/sbin/update-ca-certificates >/dev/null
  fi
  # Name resolution as on the host (it may change between runs).
  rm -f "$root/etc/resolv.conf"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
}

# --- ensure -----------------------------------------------------------------------------------------
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

check_keyring() {
  [[ -r $keyring ]] || die "missing $keyring: install the Debian package debian-archive-keyring"
  command -v gpg >/dev/null 2>&1 || return 0  # debootstrap's own check (gpgv) still applies
  if ! gpg --no-default-keyring --keyring "$keyring" --list-keys --with-colons 2>/dev/null |
    grep -q "^uid:.*/$target)"; then
    die "the host's $keyring has no key for $target (no uid '.../$target)'): debootstrap could not" \
      "verify $target's Release file. Upgrade debian-archive-keyring (bookworm's 2023.3+deb12u1 or later" \
      "carries trixie's keys)."
  fi
}

create_root() {
  local mirror log include
  apt_install_host debootstrap debootstrap
  mirror=$(host_mirror) || die "no 'deb' source for '$host' found in /etc/apt/sources.list.d/*.sources or" \
    "/etc/apt/sources.list: cannot tell which Debian mirror to use"
  check_keyring
  # nix-bin needs libdbi-perl (else it stays unconfigured on trixie); trixie's nix-setup-systemd
  # creates the nixbld group and writes `sandbox = true`: that default is what we want to test.
  # Its libpam-systemd depends on `default-dbus-system-bus | dbus-system-bus`, an alternative that
  # debootstrap does not resolve: name dbus (which provides both) or it stays unconfigured.
  # setup.sh needs nix-build, python3 -m pip/venv and git; ca-certificates for pip/git over TLS;
  # the tests look for leftover processes with ps (procps).
  include=nix-bin,libdbi-perl,python3,python3-pip,python3-venv,git,ca-certificates,procps
  [[ $target == trixie ]] && include+=,nix-setup-systemd,dbus
  mkdir -p "$base"
  log="$base/$target.debootstrap.log"
  say "debootstrap $target from $mirror into $root (log: $log)"
  if ! debootstrap --variant=minbase --components=main --keyring="$keyring" --include="$include" \
    "$target" "$root" "$mirror" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    if grep -qE 'signed by unknown key|Invalid Release signature|NO_PUBKEY|EXPKEYSIG|BADSIG|KEYEXPIRED' "$log"; then
      die "the host's keyring $keyring does not verify $target's Release file from $mirror: upgrade" \
        "debian-archive-keyring on the host (see $log)"
    fi
    die "debootstrap of $target failed (see $log); the root is incomplete and will be rebuilt next time"
  fi
  # debootstrap leaves its own mounts (/proc, /sys) on failure paths; make sure none stay.
  unmount_all
  rm -f "$root"/var/cache/apt/archives/*.deb  # ~100 MB nobody needs again
  sync_host_config
  script_sha >"$stamp"
  say "root ready: $root"
}

# A root whose basics no longer run (e.g. a sandbox-paths experiment that truncated a file of its /usr
# through a bind mount) is rebuilt rather than handed out broken. Without /proc mounted, `nix` itself
# cannot start (it reads /proc/self/exe), so only check that its binary is not empty.
# shellcheck disable=SC2016 # expanded by the shell inside
root_works() {
  chroot "$root" /bin/sh -c 'test -s "$(readlink -f /usr/bin/nix-build)" && python3 --version && git --version' \
    >/dev/null 2>&1
}

ensure() {
  local why="this script changed or an earlier creation did not finish"
  if [[ -d $root && -f $stamp && $(cat "$stamp") == "$(script_sha)" ]]; then
    if root_works; then
      sync_host_config
      return 0
    fi
    why="nix-build, python3 or git no longer run inside it"
  fi
  if [[ -e $root ]]; then
    say "rebuilding $root ($why)"
    remove_root
  fi
  create_root
}

# --- run --------------------------------------------------------------------------------------------
mount_bind_ro() {  # mount_bind_ro SRC: same path inside, read-only
  local src=$1 dest="$root$1"
  if [[ -d $src ]]; then mkdir -p "$dest"; else mkdir -p "$(dirname "$dest")"; : >>"$dest"; fi
  mount --bind "$src" "$dest"
  mount -o remount,bind,ro "$dest"
}

mount_all() {
  # First the root onto itself: Nix only sandboxes when / inside the chroot is a mount point
  # (otherwise it silently falls back to no sandbox).
  mount --bind "$root" "$root"
  mount --make-private "$root"  # nothing mounted below propagates back to the host
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys" 2>/dev/null || mount --bind /sys "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mkdir -p "$root/dev/shm"
  mount -t tmpfs -o mode=1777 shm "$root/dev/shm"  # Python multiprocessing wants a real /dev/shm
  local p
  while IFS= read -r p; do mount_bind_ro "$p"; done < <(pip_local_paths)
}

copy_project() {
  local dest="$root/work/main" keep=() k f
  mkdir -p "$dest"
  for k in "${keep_in_project[@]}"; do keep+=(! -name "$k"); done
  # Replace what an earlier run copied (deleted files must go) but keep the root's own venv & co.
  find "$dest" -mindepth 1 -maxdepth 1 "${keep[@]}" -exec rm -rf --one-file-system {} +
  # Tracked and untracked-but-not-ignored files, so uncommitted edits are tested too.
  (
    cd "$repo"
    git ls-files -co --exclude-standard -z |
      while IFS= read -r -d '' f; do
        if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi  # skip tracked files deleted in the tree
      done |
      tar --null --no-recursion -T - -cf -
  ) | tar -xpf - -C "$dest"
  rm -rf --one-file-system "$root/work/shared"
  # ../shared may be a symlink (CI links it beside the clone): copy what it points at.
  if [[ -d $repo/../shared ]]; then cp -a "$(readlink -f "$repo/../shared")" "$root/work/shared"; fi
}

# The caller's pip, CA and proxy variables (their CA paths name the root's own, rebuilt bundle).
passed_env() {
  local var
  for var in $(compgen -e); do
    case $var in
      PIP_* | SSL_CERT_FILE | SSL_CERT_DIR | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE | NIX_SSL_CERT_FILE | \
        GIT_SSL_CAINFO | NODE_EXTRA_CA_CERTS | HTTPLIB2_CA_CERTS | AWS_CA_BUNDLE | \
        GRPC_DEFAULT_SSL_ROOTS_FILE_PATH | http_proxy | https_proxy | no_proxy | HTTP_PROXY | \
        HTTPS_PROXY | NO_PROXY | TERM)
        printf '%s=%s\0' "$var" "${!var}"
        ;;
    esac
  done
}

# On any exit (also TERM/INT/HUP, also while debootstrap runs): stop what runs inside, unmount all.
set_traps() {
  trap 'unmount_all' EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  trap 'exit 129' HUP
}

run_inside() {
  local env_args=() child status
  mkdir -p "$base"
  exec 9>"$lockfile"
  # Serialize runs on this root: two callers must not fight over its mounts.
  if ! flock -n 9; then
    say "waiting for another run on $root to finish"
    flock 9
  fi
  set_traps
  ensure
  unmount_all  # leftovers of a run that was killed with SIGKILL
  mount_all
  copy_project
  mapfile -d '' -t env_args < <(passed_env)
  # In the background, so a SIGTERM to us runs the trap at once (bash defers traps while a foreground
  # child runs); <&0 keeps stdin (bash would give a background job /dev/null), 9>&- keeps the lock ours.
  chroot "$root" /usr/bin/env -i -C /work/main HOME=/root \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 CI="${CI:-}" \
    "${env_args[@]}" "$@" <&0 9>&- &
  child=$!
  status=0
  wait "$child" || status=$?
  exit "$status"
}

# --- main -------------------------------------------------------------------------------------------
cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
  ensure)
    mkdir -p "$base"
    exec 9>"$lockfile"
    flock 9
    set_traps
    ensure
    ;;
  run)
    [[ ${1:-} == -- ]] && shift
    [[ $# -gt 0 ]] || die "usage: $0 run [--] CMD [ARGS...]"
    run_inside "$@"
    ;;
  shell)
    run_inside /bin/bash -l
    ;;
  destroy)
    mkdir -p "$base"
    exec 9>"$lockfile"
    flock 9
    if [[ -e $root ]]; then remove_root; fi
    rm -f "$base/$target.debootstrap.log"
    say "removed $root"
    ;;
  *)
    die "usage: $0 ensure | run [--] CMD [ARGS...] | shell | destroy"
    ;;
esac
