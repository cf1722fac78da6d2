"""Each optimisation option changes what it claims: precision, v-prediction (flow matching: test_flow_matching.py), min-SNR, noise offset,
gradient checkpointing, channels_last, compile, clipping, accumulation, warmup + cosine."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config, tiny_train_overrides
from text_ldm.sampling.schedulers import make_sampler
from text_ldm.training import train


@pytest.fixture
def model_for(tmp_path, toy_root, tiny_vq_dir):
    def build(*overrides: str):
        cfg = compose_config("train", tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) + list(overrides))
        torch.manual_seed(0)
        return instantiate(cfg.model)
    return build


def _batch(model, n: int = 4):
    torch.manual_seed(1)
    return torch.randn(n, *model.latent_shape), ["a smiling woman"] * n


def test_bf16_mixed_runs_frozen_parts_in_bf16_and_keeps_fp32_unet(model_for):
    model = model_for("trainer.precision=bf16-mixed")
    model.cast_frozen("bf16-mixed")
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.text_encoder.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.autoencoder.parameters())
    assert model.text_encoder(["a smiling woman"]).dtype == torch.bfloat16
    assert model.autoencoder.decode(torch.randn(1, *model.latent_shape, dtype=torch.bfloat16)).dtype == torch.bfloat16
    latents, captions = _batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model._diffusion_loss(latents, captions)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.unet.parameters() if p.grad is not None)
    model.cast_frozen("32-true")  # full precision leaves them alone
    assert next(model.text_encoder.parameters()).dtype == torch.bfloat16


def test_train_with_bf16_mixed_on_cpu(train_cfg):
    train_cfg.trainer.precision = "bf16-mixed"
    train_cfg.trainer.fast_dev_run = True
    assert torch.isfinite(torch.tensor(train(train_cfg)["train/loss"]))


def test_v_prediction_changes_the_target_and_reaches_the_sampler(model_for):
    eps = model_for()
    v = model_for("model.objective=v_prediction")
    latents, _ = _batch(v)
    noise, t = torch.randn_like(latents), torch.tensor([10, 300, 600, 990])
    a = v.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(v._target(latents, noise, t), a.sqrt() * noise - (1 - a).sqrt() * latents, atol=1e-6)
    assert torch.equal(eps._target(latents, noise, t), noise)
    for name in ("ddim", "dpmpp_2m", "euler_a", "unipc"):
        assert make_sampler(name, v.noise_scheduler.config).config.prediction_type == "v_prediction"
    with pytest.raises(Exception, match="objective=.sample.; choose one of"):
        model_for("model.objective=sample")
    with pytest.raises(Exception, match="prediction_type='epsilon' contradicts model.objective='v_prediction'"):
        model_for("model.objective=v_prediction", "+model.noise_scheduler.prediction_type=epsilon")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights(model_for, prediction):
    model = model_for(f"model.objective={prediction}", "model.snr_gamma=5.0")
    t = torch.tensor([0, 100, 500, 999])
    a = model.noise_scheduler.alphas_cumprod[t]
    snr = a / (1 - a)
    expected = torch.clamp(snr, max=5.0) / (snr + 1 if prediction == "v_prediction" else snr)
    assert torch.allclose(model._loss_weights(t), expected)
    assert model._loss_weights(t)[0] < 0.01 and model._loss_weights(t)[-1] > 0.9 * (1 if prediction == "epsilon" else 0)


def test_logit_normal_timesteps_follow_their_distribution_and_validation_stays_uniform(model_for):
    uniform = model_for()
    logit = model_for("model.timestep_sampling.kind=logit_normal", "model.timestep_sampling.mean=0.5",
                      "model.timestep_sampling.std=1.0")
    draw = lambda m, kind=None: m.sample_timesteps(20000, "cpu", torch.Generator().manual_seed(0), kind)  # noqa: E731
    t_uniform, t_logit = draw(uniform).float(), draw(logit).float()
    assert 0 <= t_logit.min() and t_logit.max() <= 999
    # The nearly clean end (t < 100) gets 10 % of uniform draws and about P(z < logit(0.1) - 0.5) = 1.1 % here.
    assert abs((t_uniform < 100).float().mean() - 0.10) < 0.01 and (t_logit < 100).float().mean() < 0.02
    # Median at T * sigmoid(mean) = 622.
    assert abs(t_logit.median() - 622) < 15 and abs(t_uniform.median() - 500) < 15
    assert torch.equal(draw(logit, "uniform"), draw(uniform))  # what validation_step asks for
    with pytest.raises(Exception, match="timestep_sampling.kind='cubic'; choose one of"):
        model_for("model.timestep_sampling.kind=cubic")


def test_noise_offset_adds_per_channel_mean(model_for):
    plain_model, offset_model = model_for(), model_for("model.noise_offset=0.5")
    latents = torch.zeros(512, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    means_plain = plain_model._sample_noise(latents, g()).mean(dim=(2, 3))
    means_offset = offset_model._sample_noise(latents, g()).mean(dim=(2, 3))
    # per-channel means: std 1/8 without, sqrt(1/64 + 0.25) with the offset
    assert means_plain.std() < 0.15 and 0.45 < means_offset.std() < 0.58


def test_gradient_checkpointing_saves_fewer_activations_and_keeps_gradients(model_for):
    saved, grads = {}, {}
    for flag in (False, True):
        model = model_for(f"model.gradient_checkpointing={str(flag).lower()}")
        latents, captions = _batch(model)
        numel = []

        def pack(tensor):
            numel.append(tensor.numel())
            return tensor

        torch.manual_seed(2)
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model._diffusion_loss(latents, captions)
        loss.backward()
        saved[flag], grads[flag] = sum(numel), model.unet.conv_in.weight.grad
    assert saved[True] < 0.8 * saved[False]  # activations kept for backward: recomputed instead
    assert torch.allclose(grads[False], grads[True], atol=1e-6)


def test_channels_last_changes_the_memory_format(model_for):
    model = model_for("model.channels_last=true")
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    model.unet.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    latents, captions = _batch(model)
    model._diffusion_loss(latents, captions)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert not model_for().unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_fused_adamw_is_the_default_and_takes_the_same_steps_as_the_loop(model_for):
    def three_steps(*overrides):
        model = model_for(*overrides)
        optimizer = model.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        for _ in range(3):
            model._diffusion_loss(*_batch(model)).backward()
            optimizer.step()
            optimizer.zero_grad()
        return optimizer, torch.cat([p.detach().flatten() for p in model.unet.parameters()])

    fused, fused_weights = three_steps()
    loop, loop_weights = three_steps("model.optimizer.fused=false")
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    start = torch.cat([p.detach().flatten() for p in model_for().unet.parameters()])
    assert (fused_weights - start).abs().max() > 1e-4  # the steps moved the weights...
    torch.testing.assert_close(fused_weights, loop_weights, atol=1e-5, rtol=1e-4)  # ...alike


def test_compile_runs_the_unet_through_dynamo(model_for):
    """What it checks: the UNet is compiled in place (same state_dict keys) and its forward goes
    through torch.compile. The aot_eager backend keeps this fast on CPU; inductor is the default."""
    import torch._dynamo

    torch._dynamo.reset()
    eager, compiled = model_for(), model_for("+model.compile.backend=aot_eager")
    assert compiled.unet._compiled_call_impl is not None and eager.unet._compiled_call_impl is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    latents, captions = _batch(compiled)
    context = compiled.text_encoder(captions)
    t = torch.tensor([10, 200, 400, 800])
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out = compiled(latents, t, context)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before
    assert torch.allclose(out, eager(latents, t, context), atol=1e-4)


def test_compiled_training_run_checkpoints_plain_weights_and_samples_uncompiled(train_cfg, tmp_path):
    """A whole fit with a compiled UNet (EMA, validation, preview grids, checkpoint): the checkpoint's
    keys carry no `_orig_mod.` and the sampling loader rebuilds the UNet without compile, so sampling a
    checkpoint does not pay a cold compile. aot_eager keeps the compile fast on CPU."""
    import torch._dynamo

    from text_ldm.models.components import DiffusionComponents

    torch._dynamo.reset()
    train_cfg.trainer.max_steps = 2
    train_cfg.model.compile = {"backend": "aot_eager"}
    train(train_cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["compile"] == {"backend": "aot_eager"}
    assert not any("_orig_mod" in key for key in saved["state_dict"])
    model = DiffusionComponents.from_checkpoint(ckpt)
    assert model.unet._compiled_call_impl is None
    assert torch.equal(model.unet.conv_in.weight, saved["state_dict"]["unet.conv_in.weight"])


def _sgd_run(cfg, *overrides):
    cfg.trainer.max_steps, cfg.callbacks.ema = 1, None
    cfg.model.optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0}
    for key, value in overrides:
        cfg.trainer[key] = value
    torch.manual_seed(0)
    return cfg


def test_gradient_clipping_bounds_the_update(train_cfg, tmp_path):
    from text_ldm.utils.checkpoint_io import load_checkpoint

    deltas = {}
    for clip in (None, 1e-3):
        cfg = train_cfg.copy()
        cfg.paths.output_dir = str(tmp_path / f"clip{clip}")
        _sgd_run(cfg, ("gradient_clip_val", clip), ("limit_val_batches", 0))
        cfg.callbacks.model_checkpoint.monitor = None
        train(cfg)
        after = load_checkpoint(tmp_path / f"clip{clip}" / "checkpoints" / "last.ckpt")["state_dict"]
        L.seed_everything(cfg.seed)  # as train() does, so this is the initial UNet
        before = instantiate(cfg.model).unet.state_dict()
        deltas[clip] = torch.cat([(after["unet." + k] - v).flatten() for k, v in before.items()]).norm()
    # SGD at lr 1: the update is the gradient, whose norm clipping caps at 1e-3
    assert deltas[1e-3] <= 1e-3 * 1.001 and deltas[None] > 10 * 1e-3


def test_accumulation_halves_the_optimiser_steps(train_cfg, caplog):
    train_cfg.trainer.accumulate_grad_batches = 2
    train_cfg.trainer.limit_val_batches = 0
    train_cfg.callbacks.image_logger.every_n_epochs = 0
    train_cfg.callbacks.model_checkpoint.monitor = None
    with caplog.at_level("INFO"):
        train(train_cfg)
    from text_ldm.utils.checkpoint_io import load_checkpoint

    checkpoint = load_checkpoint(train_cfg.paths.output_dir + "/checkpoints/last.ckpt")
    assert checkpoint["global_step"] == 2  # 4 batches of 8, 2 per optimiser step
    assert "8 per device x 1 device(s) x 2 accumulation = 16 effective" in caplog.text


def test_warmup_cosine_schedule(model_for):
    model = model_for("model/lr_scheduler=warmup_cosine", "model.lr_scheduler.num_warmup_steps=10",
                      "model.lr_scheduler.num_training_steps=100")
    config = model.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base = model.hparams.optimizer["lr"]
    assert lrs[0] == 0 and lrs[5] == pytest.approx(base / 2) and lrs[10] == pytest.approx(base)
    assert lrs[55] == pytest.approx(base / 2, rel=0.05) and lrs[99] < base / 100
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
