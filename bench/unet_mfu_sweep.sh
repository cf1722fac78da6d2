#!/usr/bin/env bash
# The GPU table of bench/README.md ("UNet MFU"): unet_base's widths in bf16 at the real path's latent shape
# (3 x 64 x 64): as configured, with 64-channel heads, and without attention at the 64 x 64 level
# (model=unet_base_ldm), then the AdamW implementation, channels_last, larger batches and torch.compile.
# One process per row; rows land in $1 (default mfu.md) as they finish, so a run stopped early keeps what it
# measured. Extra arguments are Hydra overrides given to every row.
# ROW_TIMEOUT (s, default 420) bounds each row: a cold compile of unet_base takes about 150 s on an H200.
set -u
out=${1:-mfu.md}; shift || true
py=${PYTHON:-python}
run() { timeout "${ROW_TIMEOUT:-420}" "$py" bench/unet_mfu.py --precision bf16-mixed --peak-tflops 989 \
          --append "$out" "$@" || echo "row failed or timed out: $*" | tee -a "$out"; }
wide="model.unet.attention_head_dim=[4,6,8,12]"
torch_adamw="model.optimizer.fused=false"  # torch's own choice of AdamW implementation; fused is the default
run --header --model unet_base --batch 64 --label "unet_base as configured, torch's AdamW" $torch_adamw "$@"
run --model unet_base --batch 64 --label "unet_base, 64-d heads, torch's AdamW" $wide $torch_adamw "$@"
run --model unet_base_ldm --batch 64 --label "unet_base_ldm, torch's AdamW" $torch_adamw "$@"
run --model unet_base_ldm --batch 64 --label "unet_base_ldm" "$@"
run --model unet_base_ldm --batch 64 --channels-last --label "unet_base_ldm, torch's AdamW" $torch_adamw "$@"
run --model unet_base_ldm --batch 128 --steps 20 --label "unet_base_ldm" "$@"
run --model unet_base_ldm --batch 256 --steps 20 --label "unet_base_ldm" "$@"
run --model unet_base_ldm --batch 128 --steps 20 --compile --label "unet_base_ldm" "$@"
run --model unet_base_ldm --batch 256 --steps 20 --compile --label "unet_base_ldm" "$@"
run --model unet_base --batch 64 --steps 20 --compile --label "unet_base as configured" "$@"
