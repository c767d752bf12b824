"""Timestep schedules and samplers: small stateless functions over a denoiser callable (k-diffusion style).

Notation (variance-preserving diffusion, Ho et al. 2020; Kingma et al. 2021 "Variational Diffusion Models"):

    abar_t = alphas_cumprod[t],  alpha_t = sqrt(abar_t),  sigma_t = sqrt(1 - abar_t)
    x_t = alpha_t * x0 + sigma_t * eps,  lambda_t = log(alpha_t / sigma_t)  (half the log-SNR)

The denoiser predicts either eps ("epsilon") or v = alpha_t * eps - sigma_t * x0 ("v_prediction", Salimans & Ho
2022, "Progressive Distillation for Fast Sampling of Diffusion Models", sec. 4 and appendix D), so

    epsilon:       x0 = (x_t - sigma_t * eps) / alpha_t
    v_prediction:  x0 = alpha_t * x_t - sigma_t * v,   eps = sigma_t * x_t + alpha_t * v

Every sampler runs all of its timesteps and ends at the clean sample (abar = 1, sigma = 0), so its last step
returns the x0 prediction. The per-step coefficients are computed once per call in float64 from the schedule and
cast to the compute dtype (float32, or the input's dtype when wider); the latents are carried in that dtype and
handed to the denoiser in the input's dtype. Nothing is kept between calls and nothing branches on tensor values
(only on the step index), so one step can be captured in a CUDA graph or replaced by an engine.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from spire_rt.errors import OptionError

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`denoise(x_t, t) -> model output` (eps or v); `t` is a one-element int64 tensor of shape [1]."""

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""`callback(i, t, x)`, called after step `i` with that step's timestep and the latents it produced."""

PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear")

# diffusers' defaults for the keys a scheduler_config.json may leave out (SD 1.5's has no prediction_type).
_CONFIG_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class NoiseSchedule:
    """A trained model's discrete noise schedule and what its denoiser predicts."""

    alphas_cumprod: torch.Tensor  # float64 [T], abar_t for t = 0 .. T-1
    prediction_type: str  # "epsilon" | "v_prediction"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.alphas_cumprod.ndim != 1 or self.alphas_cumprod.numel() == 0:
            raise ValueError(
                f"alphas_cumprod must be a non-empty 1-D tensor, got {tuple(self.alphas_cumprod.shape)}"
            )
        if self.alphas_cumprod.dtype != torch.float64:
            raise ValueError(f"alphas_cumprod must be float64, got {self.alphas_cumprod.dtype}")

    @classmethod
    def from_config(cls, config: Mapping) -> NoiseSchedule:
        """Build the schedule from a diffusers `scheduler_config.json` dict (any diffusers scheduler class).

        Reads num_train_timesteps, beta_start, beta_end, beta_schedule ("linear" | "scaled_linear") and
        prediction_type ("epsilon" | "v_prediction"), with diffusers' defaults for missing keys; sampler settings
        (timestep_spacing, steps_offset, clip_sample, ...) are ignored. Raises ValueError for any other beta
        schedule or prediction type, and for `trained_betas` or `rescale_betas_zero_snr`, which would change the
        schedule in ways not read here.

        The betas and their cumulative product are computed in float32 exactly as diffusers does, then widened to
        float64, so the schedule is bit-for-bit the one the checkpoint's diffusers scheduler uses (a float64
        cumprod differs by about 1e-6 relative, which shows at about 1e-5 in x0 at t = T-1).
        """
        cfg = {
            **_CONFIG_DEFAULTS,
            **{k: v for k, v in config.items() if k in _CONFIG_DEFAULTS and v is not None},
        }
        if config.get("trained_betas") is not None:
            raise ValueError("scheduler config with trained_betas is not supported")
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("scheduler config with rescale_betas_zero_snr is not supported")
        steps = cfg["num_train_timesteps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {steps!r}")
        beta_start, beta_end = cfg["beta_start"], cfg["beta_end"]
        if not all(isinstance(b, numbers.Real) and 0.0 < b < 1.0 for b in (beta_start, beta_end)):
            raise ValueError(f"beta_start and beta_end must lie in (0, 1), got {beta_start!r}, {beta_end!r}")
        if cfg["beta_schedule"] == "linear":
            betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
        elif cfg["beta_schedule"] == "scaled_linear":  # latent diffusion's schedule: linear in sqrt(beta)
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {cfg['beta_schedule']!r}")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)
        return cls(alphas_cumprod=alphas_cumprod, prediction_type=cfg["prediction_type"])

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def _alpha_sigma(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t in `like`'s compute dtype, shaped [B or 1, 1, ...] to broadcast over `like`."""
        t = torch.as_tensor(t, dtype=torch.int64, device=like.device)
        abar = self.alphas_cumprod.to(like.device)[t].reshape(-1, *([1] * (like.ndim - 1)))
        dtype = _compute_dtype(like)
        return abar.sqrt().to(dtype), (1.0 - abar).sqrt().to(dtype)

    def predict_x0(self, x: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x0 from x_t and the model output at timestep(s) `t` (a scalar, [1] or [B])."""
        alpha, sigma = self._alpha_sigma(t, x)
        xc, m = x.to(alpha.dtype), model_output.to(alpha.dtype)
        x0 = (xc - sigma * m) / alpha if self.prediction_type == "epsilon" else alpha * xc - sigma * m
        return x0.to(x.dtype)

    def predict_eps(self, x: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """eps from x_t and the model output at timestep(s) `t` (a scalar, [1] or [B])."""
        alpha, sigma = self._alpha_sigma(t, x)
        xc, m = x.to(alpha.dtype), model_output.to(alpha.dtype)
        eps = m if self.prediction_type == "epsilon" else sigma * xc + alpha * m
        return eps.to(x.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The forward process q(x_t | x0): alpha_t * x0 + sigma_t * noise (Ho et al. 2020, eq. 4)."""
        alpha, sigma = self._alpha_sigma(t, x0)
        return (alpha * x0.to(alpha.dtype) + sigma * noise.to(alpha.dtype)).to(x0.dtype)


def trailing_timesteps(steps: int, num_train_timesteps: int = 1000, strength: float = 1.0) -> torch.Tensor:
    """`steps` descending int64 timesteps, "trailing"-spaced over the first `strength * T` training steps.

    Trailing spacing (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2)
    starts at the last training step, so even one step starts from (nearly) pure noise:
    `round(arange(s*T, 0, -s*T/steps)) - 1`. With strength 1 this is diffusers' `timestep_spacing="trailing"`
    (first `steps` entries: for some step counts, e.g. 61, numpy's float arange yields one more, which diffusers
    keeps as timestep -1). With strength < 1 the sampler starts, SDEdit-style, from a degraded latent noised to
    `timesteps[0]` (Meng et al. 2022).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise OptionError(f"steps must be a positive integer, got {steps!r}")
    if (
        isinstance(num_train_timesteps, bool)
        or not isinstance(num_train_timesteps, (int, np.integer))
        or num_train_timesteps < 1
    ):
        raise OptionError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
    if not (isinstance(strength, numbers.Real) and 0.0 < strength <= 1.0):
        raise OptionError(f"strength must be in (0, 1], got {strength!r}")
    span = strength * num_train_timesteps
    if steps > span:
        raise OptionError(
            f"steps ({steps}) must not exceed strength * num_train_timesteps ({strength} * {num_train_timesteps}"
            f" = {span:g}): each step needs its own training timestep"
        )
    # numpy's arange and round-half-to-even, as diffusers computes them, so the values agree bit for bit.
    timesteps = np.round(np.arange(span, 0, -span / steps))[:steps].astype(np.int64) - 1
    return torch.from_numpy(timesteps)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _check(x: torch.Tensor, timesteps: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if timesteps.ndim != 1 or timesteps.numel() == 0 or timesteps.is_floating_point():
        raise ValueError(
            f"timesteps must be a non-empty 1-D integer tensor, got {timesteps.dtype} "
            f"{tuple(timesteps.shape)}"
        )


def _alphas_sigmas(schedule: NoiseSchedule, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 alpha, sigma at each timestep, followed by the clean end point alpha = 1, sigma = 0: [n + 1]."""
    abar = schedule.alphas_cumprod.to(timesteps.device)[timesteps]
    abar = torch.cat([abar, abar.new_ones(1)])
    return abar.sqrt(), (1.0 - abar).sqrt()


def _x0_coefficients(schedule: NoiseSchedule, alpha: torch.Tensor, sigma: torch.Tensor):
    """(c_x, c_m) with x0 = c_x * x_t + c_m * model_output."""
    if schedule.prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    return alpha, -sigma


def _eps_coefficients(schedule: NoiseSchedule, alpha: torch.Tensor, sigma: torch.Tensor):
    """(c_x, c_m) with eps = c_x * x_t + c_m * model_output."""
    if schedule.prediction_type == "epsilon":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    return sigma, alpha


def sample_ddim(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: NoiseSchedule,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with eta = 0).

    From x at t_i to t_{i+1} (the next timestep, or the clean end point abar = 1 after the last):

        x_{i+1} = alpha_{i+1} * x0(x_i, m_i) + sigma_{i+1} * eps(x_i, m_i)

    x0 and eps are both linear in (x_i, m_i), so each step is `coef_x[i] * x_i + coef_m[i] * m_i`, the
    coefficients folded in float64. The last step (alpha = 1, sigma = 0) returns the x0 prediction. Equals diffusers' DDIMScheduler with
    set_alpha_to_one=True whenever the step count divides T (diffusers steps to t - T // steps, not to the next
    timestep of the list).
    """
    _check(x, timesteps)
    dtype = _compute_dtype(x)
    timesteps = timesteps.to(device=x.device, dtype=torch.int64)
    alpha, sigma = _alphas_sigmas(schedule, timesteps)
    x0_x, x0_m = _x0_coefficients(schedule, alpha[:-1], sigma[:-1])
    eps_x, eps_m = _eps_coefficients(schedule, alpha[:-1], sigma[:-1])
    coef_x = (alpha[1:] * x0_x + sigma[1:] * eps_x).to(x.device, dtype)
    coef_m = (alpha[1:] * x0_m + sigma[1:] * eps_m).to(x.device, dtype)

    xc = x.to(dtype)
    for i in range(timesteps.shape[0]):
        t = timesteps[i : i + 1]
        m = denoise(xc.to(x.dtype), t).to(dtype)
        xc = coef_x[i] * xc + coef_m[i] * m
        if callback is not None:
            callback(i, t, xc)
    return xc.to(x.dtype)


def sample_dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: NoiseSchedule,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models", Algorithm 2), the multistep second-order solver of the data-prediction ODE.

    With h_i = lambda_{i+1} - lambda_i, r_i = h_{i-1} / h_i and x0_i the data prediction at step i:

        D_i     = (1 + 1 / (2 r_i)) * x0_i - 1 / (2 r_i) * x0_{i-1}
        x_{i+1} = (sigma_{i+1} / sigma_i) * x_i - alpha_{i+1} * (exp(-h_i) - 1) * D_i

    The first step has no x0_{i-1} and is first order (D_0 = x0_0, i.e. DDIM). The final sigma is 0 (diffusers'
    final_sigmas_type="zero"), where h is infinite and the second-order correction undefined, so the final step is
    first order for every step count: it returns x0 of the last step. That covers "lower_order_final" (diffusers
    forces it for < 15 steps, and for any step count when the final sigma is 0). exp(-h_i) is computed as
    (sigma_{i+1} alpha_i) / (alpha_{i+1} sigma_i) so the final step stays finite.
    """
    _check(x, timesteps)
    dtype = _compute_dtype(x)
    timesteps = timesteps.to(device=x.device, dtype=torch.int64)
    n = timesteps.shape[0]
    alpha, sigma = _alphas_sigmas(schedule, timesteps)
    x0_x, x0_m = _x0_coefficients(schedule, alpha[:-1], sigma[:-1])
    ratio = sigma[1:] / sigma[:-1]  # sigma_{i+1} / sigma_i; 0 at the last step
    phi = alpha[1:] - ratio * alpha[:-1]  # -alpha_{i+1} * (exp(-h_i) - 1); 1 at the last step
    lam = torch.log(alpha[:-1]) - torch.log(sigma[:-1])  # finite: only the n noisy timesteps
    h = lam[1:] - lam[:-1]  # h_i for steps 0 .. n-2 (the last step's h is infinite and unused)
    half_inv_r = torch.zeros(n, dtype=torch.float64, device=alpha.device)  # 1 / (2 r_i) for steps 1 .. n-2
    half_inv_r[1 : n - 1] = h[1:] / (2.0 * h[:-1])
    x0_x, x0_m, ratio, phi, half_inv_r = (c.to(x.device, dtype) for c in (x0_x, x0_m, ratio, phi, half_inv_r))

    xc = x.to(dtype)
    x0_prev = None
    for i in range(n):
        t = timesteps[i : i + 1]
        m = denoise(xc.to(x.dtype), t).to(dtype)
        x0 = x0_x[i] * xc + x0_m[i] * m
        if i == 0 or i == n - 1:
            d = x0
        else:
            d = x0 + half_inv_r[i] * (x0 - x0_prev)
        xc = ratio[i] * xc + phi[i] * d
        x0_prev = x0
        if callback is not None:
            callback(i, t, xc)
    return xc.to(x.dtype)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}
