#!/usr/bin/env bash
# Submit an image, poll the job, fetch the heatmap PNG, its overlay and the JSON array.
# Usage: examples/heatmap.sh [IMAGE] [OUT_DIR]
# Server: $KRYPTON_URL (default http://127.0.0.1:8000); model: $KRYPTON_MODEL (default resnet18);
# key: $KRYPTON_API_KEY, where the service enforces keys.
set -euo pipefail
url=${KRYPTON_URL:-http://127.0.0.1:8000}
call() {  # curl with the key, if one is set; fails with the problem document on errors
  if [ -n "${KRYPTON_API_KEY:-}" ]; then
    curl -sS --fail-with-body -H "Authorization: Bearer $KRYPTON_API_KEY" "$@"
  else
    curl -sS --fail-with-body "$@"
  fi
}
image=${1:-examples/retina.jpg}
out=${2:-out}
mkdir -p "$out"

job=$(call -F "image=@$image" -F "model=${KRYPTON_MODEL:-resnet18}" -F patch_size=16 \
      -F stride=8 "$url/v1/heatmaps")
id=$(printf '%s' "$job" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "submitted job $id"

while :; do
  doc=$(call "$url/v1/heatmaps/$id")
  status=$(printf '%s' "$doc" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["status"], round(d["progress"], 2))')
  echo "status: $status"
  case $status in
    succeeded*) break ;;
    failed*) printf '%s\n' "$doc" >&2; exit 1 ;;
  esac
  sleep 1
done

call -o "$out/heatmap.png" "$url/v1/heatmaps/$id/heatmap.png"
call -o "$out/overlay.png" "$url/v1/heatmaps/$id/heatmap.png?overlay=1"
call -o "$out/heatmap.json" "$url/v1/heatmaps/$id/heatmap.json"
echo "wrote $out/heatmap.png $out/overlay.png $out/heatmap.json"
