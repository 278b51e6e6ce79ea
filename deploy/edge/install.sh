#!/usr/bin/env bash
# One command that makes an Ubuntu box with a GPU and Ollama a Tandem edge: installs Tandem,
# writes the edge config, installs and starts the systemd unit with the Ollama override, enrolls
# the box with the gateway (its API key and, with mTLS, its certificate) and checks the result
# with `tandem edge doctor`. Run as root from a Tandem checkout (or the unpacked release):
#
#   sudo deploy/edge/install.sh --gateway tandem-gateway.example.com:443 \
#       --edge-id line-a-box-1 --api-key-file ./line-a-box-1.key --ca-file ./ca.crt
#
# The key comes from the center: `tandem gateway keys create --tenant factory-a --edge line-a-box-1`.
# Options:
#   --gateway HOST:PORT        the gateway's gRPC address (required)
#   --api-key-file FILE        the edge's key (or TANDEM_EDGE_API_KEY in this environment)
#   --edge-id ID               this box's name (default: the host name); the key must be for it
#   --group NAME               the fleet group rollouts target (default: default)
#   --ca-file FILE             CA of the gateway's certificate (default: the system's CAs)
#   --cert-file F --key-file F this box's client certificate and key, for mTLS
#   --server-name NAME         the name the gateway's certificate must carry, when it is not
#                              the --gateway host (an address, a tunnel)
#   --plaintext                no TLS to the gateway (a lab; never across a WAN)
#   --model NAME               the Ollama model kept loaded (default: qwen3:14b)
#   --num-ctx N --num-parallel N   context per slot and slots (default: 16384, 4)
#   --registry-user U --registry-password-file F   credentials for model sync's pulls
#   --pull                     `ollama pull` the model when Ollama lacks it (from ollama.com;
#                              with model sync, versions come from your registry instead)
#   --prefix DIR               where Tandem goes (default: /opt/tandem)
#   --no-install               use the Tandem already at --prefix
#   --root DIR                 write every file under DIR instead of / (and imply --no-systemd)
#   --no-systemd               write the units but do not (re)start anything
# It exits with the doctor's status: 0 when every check passed.
set -euo pipefail

src="$(cd "$(dirname "$0")/../.." && pwd)"
gateway="" key_file="" edge_id="$(hostname)" group="default" ca_file="" cert_file="" tls_key_file=""
server_name="" plaintext=0 model="qwen3:14b" num_ctx=16384 num_parallel=4 registry_user="" registry_password_file=""
prefix="/opt/tandem" install=1 root="" systemd=1 pull=0
ollama_host="127.0.0.1:11434" keep_alive="30m"

die() { echo "install.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --gateway) gateway="$2"; shift 2 ;;
    --api-key-file) key_file="$2"; shift 2 ;;
    --edge-id) edge_id="$2"; shift 2 ;;
    --group) group="$2"; shift 2 ;;
    --ca-file) ca_file="$2"; shift 2 ;;
    --cert-file) cert_file="$2"; shift 2 ;;
    --key-file) tls_key_file="$2"; shift 2 ;;
    --server-name) server_name="$2"; shift 2 ;;
    --plaintext) plaintext=1; shift ;;
    --model) model="$2"; shift 2 ;;
    --num-ctx) num_ctx="$2"; shift 2 ;;
    --num-parallel) num_parallel="$2"; shift 2 ;;
    --ollama-host) ollama_host="$2"; shift 2 ;;
    --registry-user) registry_user="$2"; shift 2 ;;
    --registry-password-file) registry_password_file="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --pull) pull=1; shift ;;
    --root) root="$2"; systemd=0; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (--help lists them)" ;;
  esac
done
[ -n "$gateway" ] || die "--gateway HOST:PORT is required"
case "$gateway" in *://*) die "--gateway takes host:port, without a scheme" ;; esac
if [ -n "$key_file" ]; then
  api_key="$(tr -d '[:space:]' <"$key_file")"
else
  api_key="${TANDEM_EDGE_API_KEY:-}"
fi
[ -n "$api_key" ] || die "no key: pass --api-key-file (from \`tandem gateway keys create --edge $edge_id\`)"
if [ -n "$cert_file$tls_key_file" ] && { [ -z "$cert_file" ] || [ -z "$tls_key_file" ]; }; then
  die "--cert-file and --key-file go together (mTLS)"
fi
if [ "$plaintext" = 1 ] && [ -n "$ca_file$cert_file$server_name" ]; then
  die "--plaintext cannot go with --ca-file/--cert-file/--server-name"
fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (it writes /etc/tandem and systemd units), or pass --root DIR"
fi

if [ "$systemd" = 1 ] && ! systemctl cat ollama.service >/dev/null 2>&1; then
  die "no ollama.service: install Ollama first (its Linux install script sets up the service)"
fi

etc="$root/etc/tandem"
units="$root/etc/systemd/system"
state="$root/var/lib/tandem"

# 1. Tandem itself: a self-contained virtual environment.
if [ "$install" = 1 ]; then
  bash "$src/deploy/install.sh" "$root$prefix"
fi
[ -x "$root$prefix/bin/tandem" ] || die "no Tandem at $root$prefix/bin/tandem"

# 2. The user the agent runs as, and its directories.
if [ -z "$root" ] && ! id tandem >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/tandem --shell /usr/sbin/nologin tandem
fi
owner() { [ -z "$root" ] && chown "$@" || true; }
install -d -m 0755 "$etc" "$units" "$units/ollama.service.d"
install -d -m 0750 "$state" "$state/models"
owner tandem:tandem "$state" "$state/models"

# 3. Enrollment material: the key (root-only, systemd hands it to the agent), the certificates.
umask 077
{
  echo "# Written by deploy/edge/install.sh; read by systemd (EnvironmentFile of tandem-edge)."
  echo "TANDEM_EDGE_API_KEY=$api_key"
  if [ -n "$registry_user" ]; then
    echo "TANDEM_REGISTRY_USERNAME=$registry_user"
    echo "TANDEM_REGISTRY_PASSWORD=$(tr -d '\n' <"$registry_password_file")"
  fi
} >"$etc/edge.env.tmp"
mv "$etc/edge.env.tmp" "$etc/edge.env"
umask 022
tls_yaml=""
if [ "$plaintext" = 0 ]; then
  install -d -m 0750 "$etc/tls"
  owner root:tandem "$etc/tls"
  tls_yaml="  tls:"
  fields=""
  if [ -n "$ca_file" ]; then
    install -m 0644 "$ca_file" "$etc/tls/ca.crt"
    fields="ca_file: /etc/tandem/tls/ca.crt"
  fi
  if [ -n "$cert_file" ]; then
    install -m 0644 "$cert_file" "$etc/tls/edge.crt"
    install -m 0640 "$tls_key_file" "$etc/tls/edge.key"
    owner root:tandem "$etc/tls/edge.key"
    fields="${fields:+$fields, }cert_file: /etc/tandem/tls/edge.crt, key_file: /etc/tandem/tls/edge.key"
  fi
  if [ -n "$server_name" ]; then
    fields="${fields:+$fields, }server_name: $server_name"
  fi
  tls_yaml="$tls_yaml {$fields}"
fi

# 4. The edge config; the Ollama override below carries the same values.
if [ -f "$etc/edge.yaml" ]; then cp -p "$etc/edge.yaml" "$etc/edge.yaml.bak"; fi
cat >"$etc/edge.yaml" <<YAML
# Written by deploy/edge/install.sh (the previous one, if any, is edge.yaml.bak).
# docs/edge-agent.md explains every key; TANDEM_* variables override them.
edge_id: $edge_id
group: $group
listen: {host: 127.0.0.1, port: 11435}
ollama:
  url: http://$ollama_host
  model: $model
  keep_alive: $keep_alive
  num_ctx: $num_ctx
  num_parallel: $num_parallel      # = OLLAMA_NUM_PARALLEL in ollama.service.d/tandem.conf
  max_queue: 2
uplink:
  address: $gateway
  api_key_env: TANDEM_EDGE_API_KEY  # set in /etc/tandem/edge.env
$tls_yaml
YAML
if [ -n "$registry_user" ]; then
  printf 'model_sync: {store_dir: /var/lib/tandem/models}\n' >>"$etc/edge.yaml"
fi
chmod 0644 "$etc/edge.yaml"

# 5. systemd: the agent's unit and Ollama's override.
sed "s#/opt/tandem#$prefix#g" "$src/deploy/edge/tandem-edge.service" >"$units/tandem-edge.service"
sed -e "s#^Environment=OLLAMA_HOST=.*#Environment=OLLAMA_HOST=$ollama_host#" \
    -e "s#^Environment=OLLAMA_NUM_PARALLEL=.*#Environment=OLLAMA_NUM_PARALLEL=$num_parallel#" \
    -e "s#^Environment=OLLAMA_KEEP_ALIVE=.*#Environment=OLLAMA_KEEP_ALIVE=$keep_alive#" \
    "$src/deploy/edge/ollama-override.conf" >"$units/ollama.service.d/tandem.conf"
chmod 0644 "$units/tandem-edge.service" "$units/ollama.service.d/tandem.conf"

if [ "$systemd" = 1 ]; then
  systemctl daemon-reload
  systemctl restart ollama
  systemctl enable --now tandem-edge
  systemctl restart tandem-edge  # a re-run picks up the new config and key
  if [ "$pull" = 1 ] && ! OLLAMA_HOST="$ollama_host" ollama show "$model" >/dev/null 2>&1; then
    OLLAMA_HOST="$ollama_host" ollama pull "$model"
  fi
fi

# 6. Check: Ollama, the model, the gateway with this key, the clock, the disk.
echo "tandem edge doctor:"
set -a
# shellcheck disable=SC1091
. "$etc/edge.env"
set +a
disk=()
[ -n "$root" ] && disk=(--disk "$state/models")
config="$etc/edge.yaml"
if [ -n "$root" ] && [ "$plaintext" = 0 ]; then
  # The config names the final paths (/etc/tandem/...); under --root they are elsewhere.
  sed "s#/etc/tandem/#$etc/#g" "$etc/edge.yaml" >"$etc/edge.doctor.yaml"
  config="$etc/edge.doctor.yaml"
fi
"$root$prefix/bin/tandem" edge doctor --config "$config" "${disk[@]}"
