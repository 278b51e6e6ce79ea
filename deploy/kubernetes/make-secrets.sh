#!/usr/bin/env bash
# Writes every secret the Kustomization reads into deploy/kubernetes/secrets/ (mode 0600,
# ignored by git): the vLLM API key, the Redis password, the registry's htpasswd and HTTP
# secret, and TLS certificates for the gateway and the registry.
#
#   deploy/kubernetes/make-secrets.sh [--gateway-host NAME] [--registry-host NAME]
#                                     [--ca-cert FILE --ca-key FILE] [--out DIR]
#
# A file that exists is kept: to rotate one secret, delete its file, run this again and
# `kubectl apply -k deploy/kubernetes` (the new content gets a new name; the pods that use it
# roll). Certificates are signed by --ca-cert/--ca-key (your CA) or by a CA made here
# (secrets/ca.crt: give it to edges as uplink.tls.ca_file). Bring your own certificates by
# putting gateway.crt/gateway.key or registry.crt/registry.key there before running this.
# The registry user is `tandem`; its password is in secrets/registry-password.
set -euo pipefail

gateway_host="tandem-gateway.example.com"
registry_host="tandem-registry.example.com"
namespace="tandem"
out="$(cd "$(dirname "$0")" && pwd)/secrets"
ca_cert=""
ca_key=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gateway-host) gateway_host="$2"; shift 2 ;;
    --registry-host) registry_host="$2"; shift 2 ;;
    --ca-cert) ca_cert="$2"; shift 2 ;;
    --ca-key) ca_key="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "make-secrets.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

umask 077
mkdir -p "$out"
cd "$out"

random() { printf "%s" "$(openssl rand -hex 32)"; }  # no newline: the files become values
keep_or_make() {  # keep_or_make FILE COMMAND...: writes FILE from COMMAND's output unless it exists
  local file="$1"; shift
  if [ ! -s "$file" ]; then "$@" >"$file.tmp" && mv "$file.tmp" "$file" && echo "wrote $out/$file"; fi
}

keep_or_make vllm-api-key random
keep_or_make redis-password random
keep_or_make registry-http-secret random
keep_or_make registry-password random

bcrypt() {  # bcrypt PASSWORD: the registry reads bcrypt entries only
  if command -v htpasswd >/dev/null 2>&1; then
    htpasswd -nbB -C 12 tandem "$1" | head -n1 | cut -d: -f2
  else
    python3 -W ignore -c 'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=4096)))' "$1"
  fi
}
if [ ! -s htpasswd ]; then
  echo "tandem:$(bcrypt "$(cat registry-password)")" >htpasswd && echo "wrote $out/htpasswd"
fi

if [ -n "$ca_cert" ]; then
  cp "$ca_cert" ca.crt
  signer_key="$ca_key"
else
  if [ ! -s ca.crt ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=Tandem CA" -keyout ca.key -out ca.crt 2>/dev/null
    echo "wrote $out/ca.crt (and ca.key: keep it offline once the certificates are made)"
  fi
  signer_key="ca.key"
fi

certificate() {  # certificate NAME HOST SERVICE: a server certificate for the ingress host and in-cluster names
  local name="$1" host="$2" service="$3"
  [ -s "$name.crt" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$host" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
    "$host" "$service" "$service" "$namespace" "$service" "$namespace" "$service" "$namespace" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey "$signer_key" -CAcreateserial -days 825 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  echo "wrote $out/$name.crt for $host"
}
certificate gateway "$gateway_host" tandem-gateway
certificate registry "$registry_host" tandem-registry
