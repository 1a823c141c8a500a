#!/usr/bin/env bash
# The README's experiment "Training part of the model: LoRA and BitFit", rerun: a relay and four
# `onebyte join` workers on the sentiment job with a given [train] section and learning rate,
# stopped and restarted at each stage so every figure is on the replica the log reached.
#
#   deploy/experiments/peft.sh BASE.safetensors NAME LR TRAIN STAGE...
#   deploy/experiments/peft.sh lm.safetensors lora 1e-3 'parameters = "lora"
#   rank = 8
#   alpha = 16
#   targets = ["attn.c_attn", "attn.c_proj"]' 250 500 1000
#
# BASE comes from `onebyte pretrain --job deploy/jobs/reviews-lm.toml --steps 1500 --out BASE`;
# TRAIN is the [train] section's body ("" trains every parameter). Binaries are taken from
# $ONEBYTE_BIN_DIR (default target/debug). Each stage prints worker 1's accuracy and loss on
# seed 1's held-out reviews, the other workers' accuracies, whether the four hashes agree, and
# worker 1's bytes.
set -euo pipefail
if [ $# -lt 5 ]; then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
base=$1 name=$2 lr=$3 train=$4
shift 4
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${ONEBYTE_BIN_DIR:-$root/target/debug}
dir=$(mktemp -d "${TMPDIR:-/tmp}/onebyte-peft-$name.XXXX")
cp "$base" "$dir/base.safetensors"
sed -e "s/^learning_rate = .*/learning_rate = $lr/" -e "s/^name = .*/name = \"$name\"/" \
  -e 's/^init = .*/init = "base.safetensors"/' "$root/deploy/jobs/reviews-sentiment.toml" > "$dir/job.toml"
if [ -n "$train" ]; then
  sha=$(sha256sum "$dir/base.safetensors" | cut -d' ' -f1)
  printf '\n[train]\n%s\nbase_sha256 = "%s"\n' "$train" "$sha" >> "$dir/job.toml"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/onebyte-relay" --job "$dir/job.toml" --store "$dir/relay.db" --listen "127.0.0.1:$port" \
  --snapshot-every 250 > "$dir/relay.log" 2>&1 &
relay=$!
trap 'kill $relay 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/api/status" > /dev/null && break
  sleep 0.2
done
start=$(date +%s)
for stage in "$@"; do
  workers=()
  for i in 1 2 3 4; do
    "$bin/onebyte" join --relay "http://127.0.0.1:$port" --until-version "$stage" --seed "$i" \
      --backend cpu --json > "$dir/w$i.$stage.json" 2> "$dir/w$i.$stage.err" &
    workers+=($!)
  done
  wait "${workers[@]}"
  python3 - "$dir" "$stage" "$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
d, stage, name, wall = sys.argv[1:]
r = [json.loads(open(f"{d}/w{i}.{stage}.json").read().strip().splitlines()[-1]) for i in (1, 2, 3, 4)]
print(f"{name} v{stage}: w1 acc {r[0]['accuracy']*100:.1f} % loss {r[0]['test_loss']:.3f}; others "
      + ", ".join(f"{x['accuracy']*100:.1f}" for x in r[1:])
      + f"; hashes_equal {len({x['hash'] for x in r}) == 1}; accepted {sum(x['accepted'] for x in r)}"
      + f"; w1 bytes sent {r[0]['bytes_sent']} received {r[0]['bytes_received']}; wall {wall} s", flush=True)
PY
done
echo "files in $dir"
