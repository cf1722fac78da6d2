"""Frozen text encoder behind one small interface: prompts in, token embeddings out."""
from __future__ import annotations

import inspect
import re
import warnings
from collections import OrderedDict

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, CLIPTextModel

from text_ldm.utils.pretrained import resolve_pretrained

MODEL_CLASSES = {"auto": AutoModel, "clip_text": CLIPTextModel}
GRANULARITIES = ("tokens", "clauses")
_CLAUSE_BREAK = re.compile(r"[,.;:!?]|\band\b", re.IGNORECASE)


def split_clauses(prompt: str) -> list[str]:
    """A prompt's clauses: the pieces between punctuation and "and" ("A man, smiling and in a hat."
    -> ["A man", "smiling", "in a hat"])."""
    return [c.strip() for c in _CLAUSE_BREAK.split(prompt) if c.strip()]


class FrozenTextEncoder(nn.Module):
    """A frozen Hugging Face text transformer that maps prompts to token embeddings.

    forward(prompts: list[str]) -> Tensor of shape (B, max_length, embed_dim), or with granularity="clauses"
    (B, max_clauses, embed_dim): one vector a clause, the mean of its token states (what a sentence-transformer
    such as MiniLM is trained to make meaningful), so that paraphrases land near each other.

    Outputs are memoised per prompt string (`cache_size` entries, least recently used dropped):
    the encoder is frozen, so an embedding never changes, and on a CPU the encoder costs more
    than the small UNet it conditions.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int, use_attention_mask: bool = True,
                 cache_size: int = 0, granularity: str = "tokens", max_clauses: int = 8):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity={granularity!r}; choose one of {list(GRANULARITIES)}")
        self.granularity, self.max_clauses = granularity, int(max_clauses)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.use_attention_mask = use_attention_mask
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._warned_truncation = False
        self.prompts_encoded = 0  # prompts that went through the transformer (memo misses included)

    @classmethod
    def from_pretrained(cls, pretrained: str, model_class: str = "auto", subfolder: str | None = None,
                        tokenizer_subfolder: str | None = None, max_length: int | None = None,
                        use_attention_mask: bool = True, cache_size: int = 0, granularity: str = "tokens",
                        max_clauses: int = 8) -> "FrozenTextEncoder":
        """Load from a hub id, a local directory (same layout) or `pkg://package/dir`."""
        if model_class not in MODEL_CLASSES:
            raise ValueError(f"model_class={model_class!r}; choose one of {sorted(MODEL_CLASSES)}")
        path = resolve_pretrained(pretrained)
        tok_kwargs = {"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}
        model_kwargs = {"subfolder": subfolder} if subfolder else {}
        tokenizer = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        model = MODEL_CLASSES[model_class].from_pretrained(path, **model_kwargs)
        max_length = max_length or min(tokenizer.model_max_length, 512)
        return cls(model, tokenizer, max_length, use_attention_mask, cache_size, granularity, max_clauses)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True):  # frozen: stays in eval mode (no dropout) whatever the caller says
        return super().train(False)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        if self.granularity == "clauses":
            return self._encode_clauses(prompts)
        batch = self._tokenize(prompts)
        mask = batch["attention_mask"] if self.use_attention_mask else None
        self.prompts_encoded += len(prompts)
        return self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state

    def _encode_clauses(self, prompts: list[str]) -> torch.Tensor:
        """(B, max_clauses, D): each clause's masked token mean; unused slots hold the empty text's, so an
        empty prompt (the CFG's unconditional) is all empty slots."""
        clauses = [split_clauses(p) for p in prompts]
        if any(len(c) > self.max_clauses for c in clauses) and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f"A prompt has more than {self.max_clauses} clauses; the rest were dropped "
                          "(this warning is shown once).", stacklevel=3)
        texts = [""] + [c for cs in clauses for c in cs[:self.max_clauses]]
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, padding=True, max_length=self.max_length, truncation=True, return_tensors="pt")
        mask = batch["attention_mask"].to(device)
        states = self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        vectors = (states * weights).sum(1) / weights.sum(1)
        out = vectors[0].expand(len(prompts), self.max_clauses, -1).clone()
        start = 1
        for i, cs in enumerate(clauses):
            n = min(len(cs), self.max_clauses)
            out[i, :n] = vectors[start:start + n]
            start += n
        self.prompts_encoded += len(prompts)
        return out

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt")
        self._warn_if_truncated(prompts)
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def token_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's INPUT: word embeddings (B, max_length, d_in) and attention mask (B, max_length),
        before position embeddings and any attention (what prompt mixing blends)."""
        if self.granularity == "clauses":
            raise ValueError("word embeddings to mix exist only with text_encoder.granularity=tokens; a clause "
                             "encoder's prompts are mixed by their clause vectors")
        batch = self._tokenize(list(prompts))
        return self.model.get_input_embeddings()(batch["input_ids"]), batch["attention_mask"]

    @torch.no_grad()
    def encode_embeddings(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the transformer on given word embeddings (B, L, d_in) -> (B, L, embed_dim); with the
        embeddings of `token_embeddings(prompts)` it equals `forward(prompts)`."""
        if "inputs_embeds" not in inspect.signature(self.model.forward).parameters:
            raise ValueError(f"{type(self.model).__name__} takes no inputs_embeds, so token-level prompt mixing "
                             "is unavailable with this text encoder; use the whole-prompt blend 'A:0.5 | B:0.5'")
        mask = attention_mask if self.use_attention_mask else None
        return self.model(inputs_embeds=inputs_embeds, attention_mask=mask).last_hidden_state

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        if self._warned_truncation:
            return
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]]
        dropped = max(lengths) - self.max_length
        if dropped > 0:
            self._warned_truncation = True
            warnings.warn(f"A prompt has {max(lengths)} tokens; the text encoder keeps {self.max_length}, "
                          f"so {dropped} tokens were dropped (this warning is shown once).", stacklevel=3)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        """prompts: B strings -> (B, max_length, embed_dim) in the encoder's dtype and device."""
        prompts = list(prompts)
        if self.cache_size <= 0:
            return self._encode(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, emb in zip(missing, self._encode(missing)):
                self._cache[prompt] = emb
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        out = torch.stack([self._cache[p] for p in prompts])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def not_memoised(self, prompts: list[str]) -> list[str]:
        """The distinct prompts among `prompts` that `forward` would have to encode."""
        return [p for p in dict.fromkeys(prompts) if p not in self._cache] if self.cache_size > 0 else []

    def memoise(self, prompts: list[str], embeddings: torch.Tensor) -> None:
        """Store embeddings (B, max_length, embed_dim) encoded elsewhere (another DDP rank) for `prompts`."""
        if self.cache_size <= 0:
            return
        device, dtype = next(self.model.parameters()).device, next(self.model.parameters()).dtype
        for prompt, emb in zip(prompts, embeddings):
            self._cache.setdefault(prompt, emb.to(device=device, dtype=dtype))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _apply(self, fn, recurse=True):  # a device/dtype move invalidates memoised tensors
        self._cache.clear()
        return super()._apply(fn, recurse)
