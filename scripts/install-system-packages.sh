#!/bin/sh
# Install the Debian packages the test suite needs, when we can (root + apt-get).
# Each package is checked by its main command (or, for an nginx module, its file)
# first, so a prepared machine does not run apt at all.
set -eu
missing=""
for pkg in "$@"; do
  case "$pkg" in
    redis-server) cmd=redis-server ;;
    nginx-light|nginx) cmd=nginx ;;
    chromium) cmd=chromium ;;
    wrk) cmd=wrk ;;
    nodejs) cmd=node ;;
    libnginx-mod-http-set-misc) cmd=/usr/lib/nginx/modules/ngx_http_set_misc_module.so ;;
    samba-ad-dc) cmd=samba ;;  # the Samba AD domain controller (tests/samba_ad.py)
    samba-ad-provision) cmd=samba-tool ;;
    libapache2-mod-auth-openidc) cmd=/usr/lib/apache2/modules/mod_auth_openidc.so ;;
    *) cmd="$pkg" ;;
  esac
  case "$cmd" in
    /*) [ -e "$cmd" ] || missing="$missing $pkg" ;;
    *)
      if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        missing="$missing $pkg"
      fi ;;
  esac
done
if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >/dev/null
else
  echo "warning: missing system packages:$missing (not root or no apt-get);" \
       "tests needing them will be skipped (or fail under CI=true)" >&2
fi
