"""Tests of the schedule, the paper's sampling step, L_simple, guidance and the samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from tiny_models import TINY, tiny_unet

from nudiff.diffusion import (
    UNet,
    UNetConfig,
    guided_eps,
    l_simple,
    linear_schedule,
    sample,
)
from nudiff.diffusion.samplers import per_sample_noise

SCHEDULE = linear_schedule()


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# --- schedule and forward process -------------------------------------------------------


def test_linear_schedule_invariants():
    s = SCHEDULE
    assert s.num_timesteps == 1000 and s.betas.dtype == torch.float64
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    assert (s.betas.diff() > 0).all()
    abar = s.alphas_cumprod
    assert ((abar > 0) & (abar < 1)).all() and (abar.diff() < 0).all()
    assert torch.equal(s.alphas_cumprod_prev[1:], abar[:-1]) and s.alphas_cumprod_prev[0] == 1
    assert s.posterior_variance[0] == 0 and (s.posterior_variance[1:] < s.betas[1:]).all()
    # golden value: the same product computed independently in numpy float64
    assert abar[-1].item() == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)), rel=1e-12)


def test_q_sample_at_first_step_is_nearly_x0():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    x1 = SCHEDULE.q_sample(x0, torch.zeros(4, dtype=torch.long), noise)
    # abar_0 = 1 - 1e-4: |x1 - x0| <= (1 - sqrt(1 - 1e-4)) |x0| + sqrt(1e-4) |noise|
    bound = (1 - math.sqrt(1 - 1e-4)) * x0.abs().max() + math.sqrt(1e-4) * noise.abs().max()
    assert (x1 - x0).abs().max() <= bound + 1e-7
    assert bound < 0.05
    expected = math.sqrt(1 - 1e-4) * x0 + math.sqrt(1e-4) * noise
    assert torch.allclose(x1, expected, atol=1e-7)


def test_q_sample_marginal_statistics_at_large_t():
    # q(y_t | y_0) = N(sqrt(abar_t) y_0, (1 - abar_t) I); y_0 = 1 everywhere, n = 2^18 draws
    n, t_index = 2**18, 999
    x0 = torch.ones(1, 1, 512, 512, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xt = SCHEDULE.q_sample(x0, torch.tensor([t_index]), noise)
    abar = SCHEDULE.alphas_cumprod[t_index].item()
    mean_se, std_se = math.sqrt(1 - abar) / math.sqrt(n), math.sqrt(1 - abar) / math.sqrt(2 * n)
    assert abs(xt.mean().item() - math.sqrt(abar)) < 5 * mean_se
    assert abs(xt.std().item() - math.sqrt(1 - abar)) < 5 * std_se
    # with zero noise the forward process is the exact deterministic scaling
    zero = SCHEDULE.q_sample(x0, torch.tensor([t_index]), torch.zeros_like(x0))
    assert torch.allclose(zero, torch.full_like(x0, math.sqrt(abar)), rtol=0, atol=1e-15)


def test_q_sample_rejects_bad_t():
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="0..999"):
        SCHEDULE.q_sample(x0, torch.tensor([0, 1000]), x0)
    with pytest.raises(ValueError, match="integer"):
        SCHEDULE.q_sample(x0, torch.tensor([0.0, 1.0]), x0)


# --- the paper's ancestral step (eq. 5) against diffusers ------------------------------


@pytest.mark.parametrize("variance, variance_type", [("posterior", "fixed_small"), ("beta", "fixed_large")])
@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_ddpm_step_matches_diffusers(variance, variance_type, t):
    ref = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type=variance_type,
        clip_sample=False,
    )
    # same linear betas; diffusers keeps them in float32
    assert torch.allclose(ref.betas.double(), SCHEDULE.betas, rtol=1e-6)
    # diffusers recovers beta_t as 1 - abar_t / abar_{t-1}, which in float32 loses ~5e-4
    # relative at t = 1; run its step in float64 so the comparison tests the formula only
    ref.alphas_cumprod, ref.one = SCHEDULE.alphas_cumprod, torch.tensor(1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(t)
    x_t, eps = (torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = ref.step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    # diffusers draws its noise as torch.randn(shape, generator) from the same seed
    noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours = SCHEDULE.ddpm_step(x_t, torch.full((2,), t), eps, noise, variance=variance)
    # diffusers goes through x0 and the posterior mean (Ho et al. eq. 7), we use eq. 5
    # directly: the two agree to float64 rounding
    assert torch.allclose(ours, expected, rtol=0, atol=1e-12)


def test_ddpm_step_per_sample_t_and_no_noise_at_zero():
    gen = torch.Generator().manual_seed(3)
    x_t, eps, noise = (torch.randn(3, 2, 4, 4, generator=gen) for _ in range(3))
    t = torch.tensor([0, 10, 999])
    batched = SCHEDULE.ddpm_step(x_t, t, eps, noise)
    for i in range(3):
        single = SCHEDULE.ddpm_step(x_t[i : i + 1], t[i : i + 1], eps[i : i + 1], noise[i : i + 1])
        assert torch.allclose(batched[i : i + 1], single, atol=1e-7)
    # at index 0 the step is the noiseless mean
    # (y_1 - beta_1 / sqrt(1 - abar_1) eps) / sqrt(alpha_1), where abar_1 = alpha_1 = 1 - beta_1
    beta = 1e-4
    mean0 = (x_t[0] - beta / math.sqrt(beta) * eps[0]) / math.sqrt(1 - beta)
    assert torch.allclose(batched[0], mean0, atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        SCHEDULE.ddpm_step(x_t, t, eps, None)


# --- L_simple and its learning ---------------------------------------------------------


def test_l_simple_matches_manual_and_drops_conditions():
    model = tiny_unet(condition_channels=3)
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        loss = l_simple(model, x0, SCHEDULE, generator=torch.Generator().manual_seed(5), cond=cond)
        # redraw t then eps from the same seed, in the documented order
        gen = torch.Generator().manual_seed(5)
        t = torch.randint(0, 1000, (4,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        manual = (eps - model(SCHEDULE.q_sample(x0, t, eps), t, cond)).pow(2).mean()
        assert torch.allclose(loss, manual, atol=1e-7)
        # drop_rate 1 replaces every condition by the null condition (zeros)
        seed5 = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        dropped = l_simple(model, x0, SCHEDULE, generator=seed5(), cond=cond, drop_rate=1.0)
        null = l_simple(model, x0, SCHEDULE, generator=seed5(), cond=torch.zeros_like(cond))
        assert torch.equal(dropped, null) and not torch.equal(dropped, loss)
    with pytest.raises(ValueError, match="drop_rate"):
        l_simple(tiny_unet(), x0, SCHEDULE, generator=torch.Generator(), drop_rate=0.2)


def test_tiny_model_learns():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY)).train()
    # 8 smooth 16x16 images: a per-image colour times a horizontal ramp
    gen = torch.Generator().manual_seed(0)
    colours = torch.rand(8, 3, 1, 1, generator=gen) * 2 - 1
    x0 = colours * torch.linspace(-1, 1, 16).reshape(1, 1, 1, 16).expand(8, 3, 16, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = l_simple(model, x0, SCHEDULE, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # an untrained net predicts eps = 0 (zero head), so the first loss is mean(eps^2) over
    # 6144 N(0, 1) draws: 1 within a few standard errors (sqrt(2 / 6144) = 0.018)
    assert losses[0] == pytest.approx(1.0, abs=0.1)
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.25 * first, (first, last)


# --- guidance --------------------------------------------------------------------------


def test_guidance():
    model = tiny_unet(condition_channels=3)
    gen = torch.Generator().manual_seed(2)
    x, cond = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([20, 600])
    with torch.no_grad():
        eps_c, eps_u = model(x, t, cond), model(x, t, torch.zeros_like(cond))
        assert torch.equal(guided_eps(model, x, t, cond, 0.0), eps_c)
        for w in (1.0, 2.0):
            # paper eq. 6: eps' = (w + 1) eps(x, t, y) - w eps(x, t)
            expected = (w + 1) * eps_c - w * eps_u
            assert torch.allclose(guided_eps(model, x, t, cond, w), expected, atol=1e-5)
        plain = tiny_unet()
        assert torch.equal(guided_eps(plain, x, t, None, 2.0), plain(x, t))
    with pytest.raises(ValueError, match="guidance_scale"):
        guided_eps(model, x, t, cond, -1.0)


# --- samplers --------------------------------------------------------------------------


def gaussian_eps_fn(s: float):
    """The exact noise predictor for data y_0 ~ N(0, s^2 I):
    E[eps | y_t] = sqrt(1 - abar_t) y_t / (abar_t s^2 + 1 - abar_t)."""
    abar = SCHEDULE.alphas_cumprod.float()

    def eps_fn(x, t):
        a = abar[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * s**2 + 1 - a)

    return eps_fn


def test_ddpm_sampler_recovers_gaussian_data():
    s, shape = 0.5, (16, 1, 16, 16)
    res = sample(
        gaussian_eps_fn(s),
        shape,
        SCHEDULE,
        sampler="ddpm",
        steps=1000,
        generators=gens(*range(16)),
        device="cpu",
        clip_denoised=False,
    )
    n = res.x0.numel()
    assert res.n_evals == 1000
    # 5 standard errors of the mean (s / sqrt(n)) and of the std (s / sqrt(2n) = 0.55%)
    assert abs(res.x0.mean().item()) < 5 * s / math.sqrt(n)
    assert res.x0.std().item() == pytest.approx(s, rel=0.03)


@pytest.mark.parametrize("sampler, steps, rtol", [("ddim", 200, 0.03), ("dpmsolver++", 50, 0.01)])
def test_deterministic_samplers_follow_the_exact_ode(sampler, steps, rtol):
    # for N(0, s^2 I) data the probability-flow ODE from t = T-1 to 0 is a pure scaling:
    # y_0 = y_T * s / sqrt(abar_T s^2 + 1 - abar_T). Both samplers converge to it as steps
    # grow (measured: DDIM 0.94 / 0.985 / 0.997 of it at 50 / 200 / 1000 steps,
    # DPM-Solver++ 0.96 / 1.001 at 20 / 50; the shortfall is the last step's posterior mean)
    s, shape = 0.5, (4, 1, 8, 8)
    a_T = SCHEDULE.alphas_cumprod[-1].item()
    exact = per_sample_noise(shape, gens(*range(4)), "cpu") * s / math.sqrt(a_T * s**2 + 1 - a_T)
    res = sample(
        gaussian_eps_fn(s),
        shape,
        SCHEDULE,
        sampler=sampler,
        steps=steps,
        generators=gens(*range(4)),
        device="cpu",
        clip_denoised=False,
    )
    assert res.n_evals == steps
    assert torch.allclose(res.x0, exact, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_sampler_reproducible_per_sample(sampler):
    model = tiny_unet(condition_channels=3)
    schedule = linear_schedule(20) if sampler == "ddpm" else SCHEDULE
    steps = 20 if sampler == "ddpm" else 5
    cond = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    calls: list[int] = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))

    def run(seeds, c):
        fn = lambda x, t: guided_eps(model, x, t, c, 2.0)  # noqa: E731
        shape = (len(seeds), 3, 16, 16)
        kw = dict(sampler=sampler, steps=steps, generators=gens(*seeds), device="cpu", clip_denoised=False)
        return sample(fn, shape, schedule, **kw)

    batch = run([11, 12, 13], cond)
    hook.remove()
    # one batched pass of 2B (conditional + null) per step, counted as one evaluation
    assert batch.n_evals == steps and calls == [6] * steps
    assert batch.x0.shape == (3, 3, 16, 16)
    alone = run([12], cond[1:2]).x0
    # equal up to float rounding of batched vs single network passes; an untrained net's
    # samples reach ~600 (x0 = (x - ...) / sqrt(abar), sqrt(abar_999) = 0.0064) and the
    # rounding grows with them, so the tolerance is relative to the samples' scale
    scale = batch.x0.abs().max()
    assert (alone - batch.x0[1:2]).abs().max() <= 1e-5 * scale
    assert torch.equal(run([11, 12, 13], cond).x0, batch.x0)
    assert (batch.x0[0] - run([14], cond[0:1]).x0[0]).abs().max() > 1e-2


def test_sample_validates_arguments():
    fn = lambda x, t: torch.zeros_like(x)  # noqa: E731
    one = dict(generators=gens(0), device="cpu")
    with pytest.raises(ValueError, match="generator"):
        sample(fn, (2, 1, 4, 4), SCHEDULE, sampler="ddim", steps=5, **one)
    with pytest.raises(ValueError, match="sampler"):
        sample(fn, (1, 1, 4, 4), SCHEDULE, sampler="euler", steps=5, **one)
    with pytest.raises(ValueError, match="steps"):
        sample(fn, (1, 1, 4, 4), SCHEDULE, sampler="ddim", steps=1001, **one)


def test_clipping_keeps_samples_in_range_and_leaves_in_range_predictions_alone():
    from nudiff.diffusion.samplers import clipped_eps_fn

    # an eps predictor that is 20% too small: its implied x0 near t = T is huge
    biased = lambda x, t: 0.8 * x  # noqa: E731
    shape, kw = (2, 1, 8, 8), dict(generators=gens(0, 1), device="cpu")
    unclipped = sample(biased, shape, SCHEDULE, sampler="ddim", steps=50, clip_denoised=False, **kw)
    clipped = sample(biased, shape, SCHEDULE, sampler="ddim", steps=50, clip_denoised=True, **kw)
    assert unclipped.x0.abs().max() > 5
    assert clipped.x0.abs().max() <= 1 + 1e-5
    # where the implied x0 already lies in [-1, 1], the prediction is unchanged
    x0 = torch.full((1, 1, 4, 4), 0.3, dtype=torch.float64)
    t = torch.tensor([500])
    eps = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = SCHEDULE.q_sample(x0, t, eps)
    assert torch.allclose(clipped_eps_fn(lambda x, t: eps, SCHEDULE)(xt, t), eps, atol=1e-10)


def test_respaced_ddpm_keeps_the_cumulative_noise_levels():
    from nudiff.diffusion.samplers import respaced_schedule

    same, t_all = respaced_schedule(SCHEDULE, 1000)
    assert same is SCHEDULE and t_all.tolist() == list(range(1000))
    short, kept = respaced_schedule(SCHEDULE, 10)
    # first and last timesteps kept; abar of the short schedule equals abar at the kept steps
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 10
    assert torch.allclose(short.alphas_cumprod, SCHEDULE.alphas_cumprod[kept], rtol=1e-10)


def test_respaced_ddpm_brackets_and_converges_to_the_data_spread():
    # On the exact predictor of N(0, 0.5^2) data, few ancestral steps with the posterior
    # variance (Ho et al.'s "fixed small") under-disperse and with beta ("fixed large")
    # over-disperse (measured: 0.467 / 0.508 at 100 steps); both approach 0.5 with steps.
    s, shape = 0.5, (16, 1, 16, 16)

    def spread(steps, variance):
        res = sample(
            gaussian_eps_fn(s),
            shape,
            SCHEDULE,
            sampler="ddpm",
            steps=steps,
            variance=variance,
            generators=gens(*range(16)),
            device="cpu",
            clip_denoised=False,
        )
        assert res.n_evals == steps
        return res.x0.std().item()

    assert spread(100, "posterior") < s < spread(100, "beta")
    assert spread(500, "posterior") == pytest.approx(s, rel=0.03)


def test_min_snr_weighting_weighs_each_sample_by_min_snr_gamma_over_snr():
    """With a network that predicts 0, each sample's squared error is mean(eps^2); Min-SNR
    weights it by min(SNR_t, gamma) / SNR_t, SNR_t = abar_t / (1 - abar_t). The draws of t and
    eps are replayed from the same seed, so the expected value is computed by hand."""
    schedule = linear_schedule(1000, 1e-4, 0.02)

    class Zero(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return torch.zeros_like(x)

    x0 = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    plain = l_simple(Zero(), x0, schedule, generator=torch.Generator().manual_seed(0))
    weighted = l_simple(Zero(), x0, schedule, generator=torch.Generator().manual_seed(0), min_snr_gamma=5.0)
    replay = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (16,), generator=replay)
    eps = torch.randn(x0.shape, generator=replay)
    abar = schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)
    weight = torch.minimum(snr, torch.tensor(5.0, dtype=snr.dtype)) / snr
    per_sample = eps.pow(2).flatten(1).mean(1)
    assert plain.item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert weighted.item() == pytest.approx((weight * per_sample.double()).mean().item(), rel=1e-5)
    assert (weight <= 1).all() and (weight[snr < 5] == 1).all() and (weight < 1).any()
    with pytest.raises(ValueError, match="min_snr_gamma"):
        l_simple(Zero(), x0, schedule, generator=torch.Generator().manual_seed(0), min_snr_gamma=0.0)
