"""Under DDP, encode each new caption on one rank and share it, instead of on every rank that draws it."""
from __future__ import annotations

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


class SharedTextMemo(Callback):
    """Before each training batch, the ranks pool the captions their memos lack, split the pooled list
    between them, encode their share and exchange the embeddings, so every rank's memo ends up holding
    every caption any rank has drawn, each encoded once.

    Why: on a CPU the frozen text encoder costs about as much per caption as the demo's UNet step per
    image (bench/step_cost.py), and each rank kept its own memo, so a caption drawn by both ranks in
    different epochs was encoded twice. The embeddings are the same ones each rank would have computed,
    so training is unchanged; only the encoding work is split. `python bench/text_memo.py` measures it:
    over the demo's 16 epochs each rank encodes about 5,400 captions instead of 8,800, 18-30 s less work
    per rank after the gathers (3-5 % of the demo's training). More ranks share more.

    A no-op in one process, for a text encoder without a memo (`cache_size: 0`), and on GPUs, where
    encoding is cheap and two object gathers per step would cost more than they save.
    """

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        encoder = pl_module.text_encoder
        if trainer.world_size < 2 or encoder.cache_size <= 0 or pl_module.device.type != "cpu" \
                or not dist.is_available() or not dist.is_initialized():
            return
        # "" too: caption dropout turns some captions into the empty prompt after this hook
        local = encoder.not_memoised(list(batch["caption"]) + [""])
        gathered: list[list[str]] = [None] * trainer.world_size
        dist.all_gather_object(gathered, local)
        pooled = sorted({prompt for prompts in gathered for prompt in prompts})  # the same order on every rank
        if not pooled:
            return
        # the first pick rotates with the step: an odd pool's extra caption goes to each rank in turn
        share = pooled[(trainer.global_rank + trainer.global_step) % trainer.world_size::trainer.world_size]
        embeddings = encoder(share) if share else None
        results: list = [None] * trainer.world_size
        dist.all_gather_object(results, (share, embeddings))
        for prompts, embs in results:
            if prompts:
                encoder.memoise(prompts, embs)
