#!/usr/bin/env bash
# The GPU MFU sweep of bench/README.md: unet_base in bf16 at the real path's latent shape (3 x 64 x 64),
# as configured, with fewer and wider (64-d) attention heads, and without attention at the 64 x 64 level,
# then compile / channels_last on the last. One process per row; rows land in $1 (default mfu.md) as they
# finish, so a run stopped early keeps what it measured. Extra arguments go to every row (Hydra overrides).
# ROW_TIMEOUT (s, default 420) bounds each row: compiling unet_base took over 150 s on an H200.
set -u
out=${1:-mfu.md}; shift || true
py=${PYTHON:-python}
run() { timeout "${ROW_TIMEOUT:-420}" "$py" bench/unet_mfu.py --model unet_base --precision bf16-mixed --peak-tflops 989 \
          --append "$out" "$@" || echo "row failed or timed out: $*" | tee -a "$out"; }
wide="model.unet.attention_head_dim=[4,6,8,12]"
no64="model.unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D,CrossAttnDownBlock2D,CrossAttnDownBlock2D]
      model.unet.up_block_types=[CrossAttnUpBlock2D,CrossAttnUpBlock2D,CrossAttnUpBlock2D,UpBlock2D]"
run --header --batch 64 --label "unet_base as configured (16 heads: 16-48-d)" "$@"
run --batch 64 --label "64-d heads" $wide "$@"
run --batch 64 --label "64-d heads, no attention at 64x64" $wide $no64 "$@"
run --batch 64 --label "64-d heads, no attention at 64x64, fused AdamW" $wide $no64 +model.optimizer.fused=true "$@"
run --batch 128 --label "64-d heads, no attention at 64x64" $wide $no64 "$@"
run --batch 64 --compile --label "64-d heads, no attention at 64x64" $wide $no64 "$@"
run --batch 64 --compile --channels-last --label "64-d heads, no attention at 64x64" $wide $no64 "$@"
run --batch 64 --compile --label "unet_base as configured (16 heads: 16-48-d)" "$@"
