#!/usr/bin/env bash
# Build the package set and publish it: a signed Nix binary cache, served on loopback by nginx, that an empty store
# substitutes from with signatures required (the `substitutes` check), each package gated by Nix's own
# rebuild check (`reproducible`). Run after scripts/setup.sh:
#
#   scripts/publish.sh                 # everything (dg launch --assets '*')
#   scripts/publish.sh group:published # publish what is built, build nothing
#
# State lives outside the repository, in DNB_PUBLISH_DIR (default /var/lib/dagster-nix-builder when root, else
# ~/.local/share/dagster-nix-builder): keys/ (made once by Nix's own nix-store --generate-binary-cache-key,
# the secret mode 0600), cache/ (the file:// binary cache, with provenance/<package>-<version>.json). Publish to
# a real cache by setting DNB_CACHE_URL (any `nix copy` URL), DNB_SIGNING_KEY and DNB_CACHE_HTTP_URL yourself;
# DNB_INDEX_UPLOAD_URL, DNB_INDEX_URL, DNB_INDEX_USER and DNB_INDEX_PASSWORD add a Python package index.
set -euo pipefail
cd "$(dirname "$0")/.."
selection=${1:-*}

default_dir=/var/lib/dagster-nix-builder
[[ $(id -u) == 0 ]] || default_dir=${XDG_DATA_HOME:-$HOME/.local/share}/dagster-nix-builder
dir=${DNB_PUBLISH_DIR:-$default_dir}
mkdir -p "$dir/keys" "$dir/cache" "$dir/nginx"

key_name=${DNB_KEY_NAME:-dagster-nix-builder-$(hostname -s)-1}
if [[ ! -s $dir/keys/secret ]]; then
  (umask 077 && nix-store --generate-binary-cache-key "$key_name" "$dir/keys/secret" "$dir/keys/public")
  echo "publish: made the signing key $key_name in $dir/keys (public: $(cat "$dir/keys/public"))" >&2
fi

export DNB_CACHE_URL=${DNB_CACHE_URL:-file://$dir/cache}
export DNB_SIGNING_KEY=${DNB_SIGNING_KEY:-$dir/keys/secret}

nginx_pid=
stop_nginx() { [[ -z $nginx_pid ]] || { kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null || true; }; }
trap stop_nginx EXIT
if [[ -z ${DNB_CACHE_HTTP_URL:-} ]]; then
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  [[ -x $nginx ]] || { echo "publish: nginx serves the cache; install it (apt-get install nginx) or set DNB_CACHE_HTTP_URL" >&2; exit 1; }
  port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$dir/nginx/nginx.conf" <<EOF
$([[ $(id -u) == 0 ]] && echo "user root;")
worker_processes 1;
error_log $dir/nginx/error.log;
pid $dir/nginx/nginx.pid;
events { worker_connections 64; }
http {
  access_log $dir/nginx/access.log;
  client_body_temp_path $dir/nginx/body; proxy_temp_path $dir/nginx/proxy; fastcgi_temp_path $dir/nginx/fastcgi;
  uwsgi_temp_path $dir/nginx/uwsgi; scgi_temp_path $dir/nginx/scgi;
  types { text/x-nix-narinfo narinfo; }
  default_type application/octet-stream;
  server { listen 127.0.0.1:$port; root ${DNB_CACHE_URL#file://}; }
}
EOF
  # setpriv: nginx gets SIGTERM if this script dies, whatever kills it.
  setpriv --pdeathsig TERM -- "$nginx" -e "$dir/nginx/error.log" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" \
    -g 'daemon off;' &
  nginx_pid=$!
  export DNB_CACHE_HTTP_URL=http://127.0.0.1:$port
  for _ in $(seq 50); do  # until nginx listens
    /usr/bin/python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" \
      2>/dev/null && break
    sleep 0.2
  done
fi
echo "publish: cache $DNB_CACHE_URL, served at $DNB_CACHE_HTTP_URL, key $(cat "$dir/keys/public" 2>/dev/null || echo "$DNB_SIGNING_KEY")" >&2
.venv/bin/dg launch --assets "$selection"
