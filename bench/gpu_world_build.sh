#!/usr/bin/env bash
# Build models/world-sdxl and models/world-flux on a GPU machine in one prepared run.
#
# The world renders are drawn once and shared; both families then train at the same time on
# the one GPU (each is small: together they use it better than one after the other), the
# oracle measures each (MODEL_CARD.md's quality table) and each model comes back as one tar
# under $OUT (the device tool returns at most 8 files).
#
# Resumable: checkpoints live in $CACHE (default .charloop/world-cache, ignored by git, kept
# on a warm machine between calls), and budgets count earlier calls' time. So a build that
# does not fit one call's limit is two calls of the same command with a larger MINUTES.
#
# Device machine (no diffusers in its image): carry wheels for Python 3.12, fetched here with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata
# then run (carry: [".whl"]):
#   MINUTES=5 bash bench/gpu_world_build.sh
# (WARM_START=1 continues from the shipped models instead of starting from scratch).
# Check it on the CPU with a toy budget:
#   DEVICE=cpu MINUTES=0.2 VAE_MINUTES=0.1 CHARACTERS=200 BATCH=16 OUT=/tmp/o bash bench/gpu_world_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/world-build-out}
CACHE=${CACHE:-.charloop/world-cache}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-5}          # denoiser budget per family (the GPU-built world-sd15: 8.2)
VAE_MINUTES=${VAE_MINUTES:-1.25}
CHARACTERS=${CHARACTERS:-40000}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-6}          # caption workers per build (two builds share 16 cores)
FAMILIES=${FAMILIES:-"sdxl flux"}
PY=${PY:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT/models" "$CACHE"
[ -e "$OUT/models/world-oracle" ] || cp -r models/world-oracle "$OUT/models/"
$PY - <<EOF
from charloop_world.dataset import cached_dataset
cached_dataset("$CACHE", $CHARACTERS, 2, 0, 14)
cached_dataset("$CACHE", 128, 1, 1)
EOF
# WARM_START=1: continue from the shipped models/world-<family> (bench/seed_world_cache.py)
[ -n "${WARM_START:-}" ] && $PY bench/seed_world_cache.py --cache "$CACHE" --family $FAMILIES
started=$(date +%s)
for family in $FAMILIES; do
  $PY -m charloop_world.build base --family "$family" --out "$OUT/models" --cache "$CACHE" \
    --device "$DEVICE" --batch-size "$BATCH" --vae-batch-size 128 --lr 6e-4 \
    --characters "$CHARACTERS" --workers "$WORKERS" --minutes "$MINUTES" \
    --vae-minutes "$VAE_MINUTES" >"$OUT/build-$family.log" 2>&1 &
done
wait
echo "trained in $(( $(date +%s) - started )) s"
# Each model comes back as one tar (written to a temp name, then renamed) as soon as it is
# trained, and again with its quality table: a call cut during the oracle's read still
# returns the trained weights (the quality step reruns on any machine).
pack() { tar -C "$OUT/models" -cf "$OUT/.world-$1.tar" "world-$1" && mv "$OUT/.world-$1.tar" "$OUT/world-$1.tar"; }
for family in $FAMILIES; do pack "$family" || echo "world-$family: nothing to pack"; done
for family in $FAMILIES; do
  $PY -m charloop_world.build quality --family "$family" --out "$OUT/models" --cache "$CACHE" \
    >>"$OUT/build-$family.log" 2>&1 &
done
wait
for family in $FAMILIES; do
  pack "$family" || echo "world-$family: nothing to pack"
  grep -A 18 "## Quality" "$OUT/models/world-$family/MODEL_CARD.md" || true
done
rm -rf "$OUT/models"
echo "done in $(( $(date +%s) - started )) s; untar with: tar -C models -xf world-<family>.tar"
