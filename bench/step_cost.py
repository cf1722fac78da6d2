"""Where a demo training step's time goes: text encoding of fresh captions vs UNet forward+backward.

    python bench/step_cost.py [batch=32] [max_length=32] [threads=2] [compile]
(`make demo` runs batch 16 per process on one thread: `python bench/step_cost.py 16 32 1`.)
With `compile`, also unet_demo through torch.compile (inductor), after its compile, whose time is printed;
always unet_demo in channels_last (weights and input).
Also times unet_demo with cross-attention at its 16 x 16 level (bench/demo_levers.md, E11), with and without
the 16 x 16 self-attention, without the 4 x 4 level's attention, on the up path only (E37) or the down path only
(E77), and on 2 x 2 patches of the latent (`+model.unet.patch_size=2`, cross-attention at all three levels: E72).
Ratios are measured side by side in one process, so they hold on a busy machine too.
"""
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pathlib import Path

from text_ldm.models.unet import build_unet
from text_ldm.utils.config import plain

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 32
max_length = int(sys.argv[2]) if len(sys.argv) > 2 else 32
conf = str(Path("conf").resolve())
caps = [l.strip() for i in range(200) for l in open(f"data/toy_faces/celeba-caption/{i}.txt")][: batch * 6]
with initialize_config_dir(conf, version_base="1.3"):
    cfg = compose("train", overrides=[f"text_encoder.max_length={max_length}"])
enc = instantiate(plain(cfg.text_encoder))
enc.cache_size = 0
tok = [len(x) for x in enc.tokenizer(caps)["input_ids"]]
print(f"caption tokens: mean {sum(tok)/len(tok):.1f}, max {max(tok)}")


def timeit(fn, n=5):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


rows = [("text encoder, fresh captions", timeit(lambda: enc(caps[:batch])))]
ctx = enc(caps[:batch])
XATTN16 = ["model.unet.down_block_types=[CrossAttnDownBlock2D,CrossAttnDownBlock2D,CrossAttnDownBlock2D]",
           "model.unet.up_block_types=[CrossAttnUpBlock2D,CrossAttnUpBlock2D,CrossAttnUpBlock2D]"]
ONLY_CROSS = ["+model.unet.only_cross_attention=[true,false,false]"]
NO_4X4 = ["model.unet.down_block_types=[CrossAttnDownBlock2D,CrossAttnDownBlock2D,DownBlock2D]",
          "model.unet.up_block_types=[UpBlock2D,CrossAttnUpBlock2D,CrossAttnUpBlock2D]"]
variants = {"unet_tiny": ["model=unet_tiny"], "unet_demo": ["model=unet_demo"],
            "unet_demo, 32 ch at 16x16 (before E33)": ["model=unet_demo", "model.unet.block_out_channels=[32,64,64]"],
            "unet_demo, additive time/text (before E14)": ["model=unet_demo", "model.unet.resnet_time_scale_shift=default"],
            "demo + 16x16 self+cross attn": ["model=unet_demo"] + XATTN16,
            "demo + 16x16 cross-only (E11)": ["model=unet_demo"] + XATTN16 + ONLY_CROSS,
            "E11 without 4x4 attn": ["model=unet_demo"] + NO_4X4 + ONLY_CROSS,
            "demo + 16x16 cross-only, up path (E37)": ["model=unet_demo", XATTN16[1]] + ONLY_CROSS,
            "demo + 16x16 cross-only, down path (E77)": ["model=unet_demo", XATTN16[0]] + ONLY_CROSS}
variants["demo on 2x2 patches, xattn everywhere (E72)"] = ["model=unet_demo", "+model.unet.patch_size=2"] + XATTN16
variants["unet_demo, channels_last"] = ["model=unet_demo"]
if "compile" in sys.argv[4:]:
    variants["unet_demo, torch.compile"] = ["model=unet_demo"]
for name, overrides in variants.items():
    with initialize_config_dir(conf, version_base="1.3"):
        m = compose("train", overrides=overrides).model
    unet = build_unet(plain(m.unet), 4, 16, 384)
    if name.endswith("torch.compile"):
        unet.compile()
    x = torch.randn(batch, 4, 16, 16)
    if name.endswith("channels_last"):
        unet, x = unet.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (batch,))

    def step():
        unet.zero_grad()
        unet(x, t, encoder_hidden_states=ctx).sample.square().mean().backward()
    if name.endswith("torch.compile"):
        start = time.perf_counter()
        step()
        print(f"torch.compile: first step (compile) {time.perf_counter() - start:.0f} s", flush=True)
    rows.append((f"{name} fwd+bwd ({sum(p.numel() for p in unet.parameters())/1e6:.2f}M)", timeit(step)))
print(f"{'part':44s} {'s/step':>8s}")
for name, s in rows:
    print(f"{name:44s} {s:8.3f}")
