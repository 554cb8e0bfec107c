#!/usr/bin/env bash
# Writes the trust material, CKKS keys and per-node encrypted shards that deploy/compose.yaml and
# deploy/k8s/ mount, into DIR (default: deploy/) as certs/, he/ and data/:
#   deploy/prepare.sh [DIR] [NODES] [HOST...]
# NODES (default 2) client nodes client-0000...; HOST (default "coordinator") are the names the
# coordinator's TLS certificate is valid for, i.e. what nodes dial. Refuses to overwrite: every
# veilfed command here fails if its output exists. Needs `veilfed` on PATH (or VEILFED=...).
set -euo pipefail

dir="${1:-$(dirname "$0")}"
nodes="${2:-2}"
shift $(( $# > 2 ? 2 : $# ))
hosts=("$@")
[[ ${#hosts[@]} -gt 0 ]] || hosts=(coordinator)
veilfed=(${VEILFED:-veilfed})

host_args=()
for h in "${hosts[@]}"; do host_args+=(--host "$h"); done
mkdir -p "$dir/data"
# CA, coordinator TLS certificate, one auth key per node, the app-signing key and its public half
"${veilfed[@]}" certs new --out "$dir/certs" --nodes "$nodes" "${host_args[@]}"
# CKKS keys: public.ctx for the coordinator, secret.ctx for the nodes only
"${veilfed[@]}" he keygen --out "$dir/he"
# The data owner's encrypted store of a small synthetic world, one shard bundle + key per node
"${veilfed[@]}" keys new --out "$dir/data/owner.key"
"${veilfed[@]}" data synth --clips 12 --frames 4 --size 32 --store "$dir/data/store" \
  --key-file "$dir/data/owner.key"
for (( i = 0; i < nodes; i++ )); do
  c=$(printf 'client-%04d' "$i")
  "${veilfed[@]}" keys derive --key-file "$dir/data/owner.key" --client "$c" \
    --out "$dir/data/$c.key"
  "${veilfed[@]}" data export --store "$dir/data/store" --key-file "$dir/data/owner.key" \
    --client "$c" --num-clients "$nodes" --out "$dir/data/$c.vfs"
done
