"""The run presets: each names only what differs from the ``config`` dataclass defaults; ``model``
is complete. Plain data, so adding a recipe never touches the code that resolves it
(``config.resolve``).
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # 8x8 digits on a laptop CPU: see BENCHMARKS.md for what each choice bought.
    "digits": {
        "model": {"kind": "unet", "channels": 32, "channel_mult": [1, 2], "num_res_blocks": 2,
                  "attention_levels": [1], "head_channels": 32, "dropout": 0.0},
        "diffusion": {"sigma_data": 0.75},  # the std of the digits pixels in [-1, 1]
        "optim": {"lr": 4e-3, "batch_size": 128, "warmup_steps": 200},
        "ema": {"halflife_samples": 50_000},
        "train": {"time_budget": 300.0, "checkpoint_every": 1000},
        "sample": {"sampler": "heun", "steps": 10},
    },
    # 2-D toys and other vectors.
    "toy": {
        "model": {"kind": "mlp", "width": 256, "depth": 4},
        "diffusion": {"sigma_data": 1.0},
        "optim": {"lr": 1e-3, "batch_size": 512, "warmup_steps": 100},
        "ema": {"halflife_samples": 100_000},
        "train": {"max_steps": 3000, "checkpoint_every": 1000},
        "sample": {"sampler": "heun", "steps": 20},
    },
    # Small images (up to ~32x32).
    "small": {
        "model": {"kind": "unet", "channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2,
                  "attention_levels": [2], "head_channels": 32, "dropout": 0.1},
        "optim": {"lr": 2e-4, "batch_size": 64, "warmup_steps": 500},
        "ema": {"halflife_samples": 500_000},
        "train": {"max_steps": 100_000, "checkpoint_every": 5000, "sample_every": 5000},
        "sample": {"sampler": "heun", "steps": 18},
    },
    # Colour emoji (OpenMoji, 32x32 RGB) with their captions, in pixel space (`train --data emoji
    # --no-latent`; the default route is latent, "emoji-latent" below). Not ablated further.
    # 4x4 pixel patches (the U-Net runs at 8x8, about a fifth of the cost of 2x2 patches per
    # step), cross-attention at 8x8 and 4x4; learning rate and EMA
    # scaled to a few thousand steps like the digits preset. First check, 10 minutes on one
    # thread: FD 1.68, prompt_accuracy 0.44 with 4x4 patches (856 steps) where 2x2 patches with
    # 48-192 channels reached FD 3.05, 0.15 in 8 minutes (251 steps) (BENCHMARKS.md).
    "emoji": {
        "model": {"kind": "unet", "channels": 64, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [0, 1], "head_channels": 32, "dropout": 0.0, "patch_size": 4},
        "diffusion": {"sigma_data": 0.63},  # the std of the emoji pixels in [-1, 1]
        "optim": {"lr": 2e-3, "batch_size": 64, "warmup_steps": 200},
        "ema": {"halflife_samples": 20_000},
        "conditioning": {"max_tokens": 24},  # the longest emoji caption has 23 word pieces
        "train": {"time_budget": 900.0, "checkpoint_every": 500},
        "sample": {"sampler": "heun", "steps": 12},
    },
    # The same on the latents of an emoji autoencoder (4 x 8 x 8 for 32x32): the network of "emoji"
    # without patches; `train --data emoji` takes this route (training.latent_route). Ablation at
    # equal time (benchmarks/emoji_ablation.sh: 6 minutes on one thread, a fixed 3-minute
    # autoencoder, 512 training prompts): the old values (p_mean -1.2, batch 64, lr 2e-3) reached
    # prompt_accuracy 0.58 / FD 1.13; noise levels shifted up (p_mean -0.4) 0.70, then batch 32
    # 0.72, then lr 4e-3 0.75 / FD 1.14. Worse at equal time: p_mean 0 (0.71, FD 1.31), 96
    # channels (0.61), lr 6e-3 (0.70), batch 16 (0.68).
    "emoji-latent": {
        "model": {"kind": "unet", "channels": 64, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [0, 1], "head_channels": 32, "dropout": 0.0},
        "diffusion": {"p_mean": -0.4},  # the prompt is decided at high noise: train there more
        "optim": {"lr": 4e-3, "batch_size": 32, "warmup_steps": 200},
        "ema": {"halflife_samples": 20_000},
        "conditioning": {"max_tokens": 24},
        "train": {"time_budget": 900.0, "checkpoint_every": 500},  # the whole route, autoencoder included
        "sample": {"sampler": "heun", "steps": 12},
    },
    # Larger images (~64x64 and up).
    "base": {
        "model": {"kind": "unet", "channels": 128, "channel_mult": [1, 2, 2, 2], "num_res_blocks": 2,
                  "attention_levels": [2], "head_channels": 64, "dropout": 0.1},
        "optim": {"lr": 1e-4, "batch_size": 64, "warmup_steps": 1000},
        "ema": {"halflife_samples": 500_000},
        "train": {"max_steps": 400_000, "checkpoint_every": 10_000, "sample_every": 10_000},
        "sample": {"sampler": "heun", "steps": 18},
    },
    # Sound as waveforms (data.audio, 8192-sample clips at 8 kHz): a 1-D U-Net on patches of 32
    # consecutive samples (256 positions, 4 ms each), attention at 32 positions; 3.6M parameters,
    # about 0.5 s a step of 32 on two CPU cores (a 64-channel net on patches of 16: 1.8 s).
    # sigma_data is the std of the spoken-digits clips; the training noise levels are shifted
    # down by ln(0.11 / 0.5) from the images' so they sit at the same place relative to the data.
    "audio-wave": {
        "model": {"kind": "unet", "dims": 1, "channels": 48, "channel_mult": [1, 2, 4, 4], "num_res_blocks": 1,
                  "attention_levels": [3], "head_channels": 32, "dropout": 0.0, "patch_size": 32},
        "diffusion": {"sigma_data": 0.11, "p_mean": -2.7},
        "optim": {"lr": 2e-3, "batch_size": 32, "warmup_steps": 200},
        "ema": {"halflife_samples": 20_000},
        "train": {"time_budget": 900.0, "checkpoint_every": 500},
        "sample": {"sampler": "heun", "steps": 18, "sigma_max": 20.0},
    },
    # Sound as log-mel spectrograms (1 x 64 x 64, data.spectral): a 2-D U-Net on 4x4 patches
    # (16 x 16), attention at 8 x 8 and 4 x 4; 2.6M parameters, about 0.36 s a step of 32.
    "audio-mel": {
        "model": {"kind": "unet", "dims": 2, "channels": 48, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                  "attention_levels": [1, 2], "head_channels": 32, "dropout": 0.0, "patch_size": 4},
        "diffusion": {"sigma_data": 0.54},
        "optim": {"lr": 2e-3, "batch_size": 32, "warmup_steps": 200},
        "ema": {"halflife_samples": 20_000},
        "train": {"time_budget": 900.0, "checkpoint_every": 500},
        "sample": {"sampler": "heun", "steps": 18},
    },
    # Sound as log-mel spectrograms, by two experts that split the noise levels (sample with
    # `--checkpoint LOW --expert HIGH --expert-above 1`): the high-noise expert reads each frame's
    # 64 bands as the channels of a 1-D U-Net over time (every layer mixes the whole spectrum,
    # where the word is decided), the low-noise expert is audio-mel trained where it works.
    # Trained 7.5 minutes each (the benchmark's 15 in all) and sampled with guidance 2.5: class
    # adherence 0.97 and fd 96 where audio-mel alone reached 0.21 and 114 (benchmarks/audio.py, one seed).
    # The pair samples best with fresh noise at every step: Euler ancestral at 20 steps gave fd 49
    # and 55 (two sets of sampling seeds), adherence 1.0, where Heun at 18 steps gave 96 and 0.97 on
    # the same networks, for 20 evaluations instead of 35 (audio-mel alone does not gain: 127 vs 114).
    "audio-mel-high": {
        "model": {"kind": "unet", "dims": 1, "rows": 64, "channels": 64, "channel_mult": [1, 2, 2],
                  "num_res_blocks": 1, "attention_levels": [1, 2], "head_channels": 32, "dropout": 0.0,
                  "patch_size": 1},
        "diffusion": {"sigma_data": 0.54, "p_mean": 0.4, "p_std": 1.0},
        "optim": {"lr": 2e-3, "batch_size": 32, "warmup_steps": 200},
        "ema": {"halflife_samples": 20_000},
        "train": {"time_budget": 450.0, "checkpoint_every": 500},
        "sample": {"sampler": "heun", "steps": 18},
    },
    "audio-mel-low": {
        "model": {"kind": "unet", "dims": 2, "channels": 48, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                  "attention_levels": [1, 2], "head_channels": 32, "dropout": 0.0, "patch_size": 4},
        "diffusion": {"sigma_data": 0.54, "p_mean": -1.6, "p_std": 1.0},
        "optim": {"lr": 2e-3, "batch_size": 32, "warmup_steps": 200},
        "ema": {"halflife_samples": 20_000},
        "train": {"time_budget": 450.0, "checkpoint_every": 500},
        "sample": {"sampler": "euler_ancestral", "steps": 20},
    },
    # 8x8 digits with a diffusion transformer (Peebles & Xie 2023), 1.85M parameters. A DiT step
    # costs about half a U-Net step here; at equal training time (1,200 vs 600 steps) it reached
    # FD 2.44 with lr 4e-3 where the digits U-Net reached 1.27 (benchmarks/digits_dit.py, one seed).
    # Video clips (T, C, H, W): the factorised space-time U-Net (nets.video_unet) on 2x2 patches of
    # each frame, temporal convolutions everywhere and attention across frames at the two coarse
    # levels; given frames (prediction, interpolation) are drawn per clip at training time
    # (steering.conditioning.frame_tasks). Provisional: not yet ablated at equal time.
    "video": {
        "model": {"kind": "video_unet", "channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                  "attention_levels": [2], "temporal_attention_levels": [1, 2], "head_channels": 32,
                  "dropout": 0.0, "patch_size": 2, "frame_cond": True},
        "optim": {"lr": 2e-3, "batch_size": 8, "warmup_steps": 200},
        "ema": {"halflife_samples": 4_000},
        "train": {"time_budget": 1200.0, "checkpoint_every": 500},
        "sample": {"sampler": "heun", "steps": 18},
    },
    # Video on the latents of a per-frame autoencoder (4 x 8 x 8 per 32 x 32 frame; the default route
    # for moving-digits): the same factorised U-Net on the latent grid, no patches. At 20 minutes
    # (one run each, BENCHMARKS.md "Video: first measurements") it beat the pixel preset on every
    # score: per-frame fd 1.16 against 3.44, clip_fd 184 against 418, motion 2.4 px against 3.7.
    # Not yet ablated further.
    "video-latent": {
        "model": {"kind": "video_unet", "channels": 64, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [1], "temporal_attention_levels": [0, 1], "head_channels": 32,
                  "dropout": 0.0, "patch_size": 1, "frame_cond": True},
        "optim": {"lr": 2e-3, "batch_size": 8, "warmup_steps": 200},
        "ema": {"halflife_samples": 4_000},
        "train": {"time_budget": 1200.0, "checkpoint_every": 500},
        "sample": {"sampler": "heun", "steps": 18},
    },
    "digits-dit": {
        "model": {"kind": "dit", "patch_size": 2, "width": 128, "depth": 6, "heads": 4, "mlp_ratio": 4.0,
                  "dropout": 0.0},
        "diffusion": {"sigma_data": 0.75},
        "optim": {"lr": 4e-3, "batch_size": 128, "warmup_steps": 200},
        "ema": {"halflife_samples": 50_000},
        "train": {"time_budget": 300.0, "checkpoint_every": 1000},
        "sample": {"sampler": "heun", "steps": 10},
    },
}
