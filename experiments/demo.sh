#!/usr/bin/env bash
# `make demo`: the federated DP simulation with CKKS secure aggregation. A small synthetic world
# goes straight into an encrypted store (never plaintext on disk); 8 virtual clients on Ray train
# the shared multimodal model with DP-SGD for a few rounds, encrypt their weights (keys generated
# into the run directory) and the coordinator only sums ciphertexts; per-task metrics, per-client
# cumulative ε, the HE cost and the MLflow command are printed, then the run audits itself
# (signed reports, recomputed ε), and the model it trained predicts on a clip from outside the
# federation. A few minutes on 2 cores. Everything lands in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VEILFED="$ROOT/.venv/bin/veilfed"
OUT="$ROOT/demo-out"
mkdir -p "$OUT"
cd "$OUT"

if [ ! -f store.key ]; then
  "$VEILFED" keys new --out store.key
fi
if [ ! -d store ]; then
  echo "== synthesizing 64 clips into an encrypted store (demo-out/store)"
  "$VEILFED" data synth --store store --key-file store.key --clips 64 --frames 8 --size 32 --seed 0
fi

echo "== federated simulation: 8 clients, 5 rounds, 4 sampled per round, client DP-SGD (eps<=8), HE"
"$VEILFED" simulate --config "$ROOT/experiments/federated.toml" --store store --key-file store.key \
  --clients 8 --rounds 5 --fraction 0.5 --he --summary-json summary.json --force
echo "== summary: demo-out/summary.json"
RUN_ID=$("$ROOT/.venv/bin/python" -c 'import json; print(json.load(open("summary.json"))["run_id"])')
RUN_DIR=$("$ROOT/.venv/bin/python" -c 'import json; print(json.load(open("summary.json"))["run_dir"])')
echo "== privacy audit of run $RUN_ID (trusted keys: the coordinator's $RUN_DIR/keys)"
if "$VEILFED" audit "$RUN_ID" --keys "$RUN_DIR/keys" --format md --out audit --force; then
  echo "audit verdict: PASS (every signed epsilon claim verified); report: demo-out/audit/audit.md"
else
  echo "audit verdict: FAIL; report: demo-out/audit/audit.md" >&2
  exit 1
fi

# The trained model at work: a clip no client ever held (another world seed), written as a real
# MP4, goes through the model the run logged (decrypted and logged by a key-holding client).
MODEL=$("$ROOT/.venv/bin/python" -c 'import json; print(json.load(open("summary.json"))["model"]["final"])')
rm -rf unseen
"$VEILFED" data synth --out unseen --clips 1 --frames 8 --size 32 --seed 4242 > /dev/null
CLIP=$(ls unseen/*.mp4 | head -n 1)
echo "== predict with $MODEL on $CLIP (a clip from outside the federation)"
"$VEILFED" predict "$MODEL" "$CLIP"
"$ROOT/.venv/bin/python" - "${CLIP%.mp4}.json" <<'PY'
import json, sys
from veilfed.data import schema
truth = json.load(open(sys.argv[1]))
print(f"truth (its sidecar): action={schema.ACTIONS[truth['action']]}, "
      f"sentiment={schema.SENTIMENTS[truth['sentiment']]}, "
      f"moderation={'yes' if truth['moderation'] else 'no'}, quality={truth['quality']:.3f}")
PY
