"""WAV files and the waveform network: exact round trips, metadata, shapes, and the samplers on
an analytic mixture of waveforms."""
import json

import numpy as np
import pytest
import torch
from conftest import SMAX, convergence_order

from undiffuse import nets
from undiffuse.core.analytic import GaussianMixture
from undiffuse.io import writers
from undiffuse.io.audio import read_wav, spectrogram, wav_bytes


def test_wav_round_trip_is_bit_exact_and_keeps_metadata(tmp_path):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32768, size=8192).astype(np.int16)
    x = pcm / 32768.0
    meta = {"parameters": {"class": "seven", "seed": 3}, "provenance": {"model_sha256": "ab" * 32}}
    data = wav_bytes(x, 8000, meta, title="class: seven")
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    y, rate, back = read_wav(str(path))
    assert rate == 8000 and np.array_equal(np.round(y * 32768).astype(np.int16), pcm)
    assert back == json.loads(json.dumps(meta))
    import soundfile
    with soundfile.SoundFile(str(path)) as f:
        assert f.subtype == "PCM_16" and f.channels == 1 and f.software.startswith("undiffuse") and f.title == "class: seven"


def test_wav_writer_writes_clips_spectrograms_and_records(tmp_path):
    t = np.arange(8192) / 8000
    clips = np.stack([0.5 * np.sin(2 * np.pi * f * t) for f in (300, 600, 1200)])[:, None]
    records = [{"model_sha256": "cd" * 32, "seed": 10 + k} for k in range(3)]
    out = writers.write_samples(clips, str(tmp_path / "s"), format="wav", seed=10, params={"sampler": "heun"},
                                per_sample=[{"class": str(k)} for k in range(3)], records=records, sample_rate=8000)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["000000.wav", "000001.wav", "000002.wav", "spectrograms.png"]
    y, rate, meta = read_wav(str(tmp_path / "s" / "000001.wav"))
    assert rate == 8000 and np.abs(y - clips[1, 0]).max() <= 0.5 / 32768 + 1e-12
    assert meta["parameters"] == {"sampler": "heun", "class": "1", "seed": 11}
    assert meta["provenance"]["watermark"] == "none (audio)" and len(out.items) == 3
    from PIL import Image
    with Image.open(tmp_path / "s" / "spectrograms.png") as im:
        assert im.size[0] > im.size[1] and "sampler: heun" in im.text["parameters"]
    with pytest.raises(ValueError, match="format 'wav' writes mono waveforms"):
        writers.write_samples(np.zeros((2, 2, 100)), None, format="wav", sample_rate=8000)


def test_spectrogram_shows_a_tone_at_its_height():
    rate = 8000
    pic = spectrogram(0.5 * np.sin(2 * np.pi * 1000 * np.arange(8192) / rate), rate)
    bins = pic.shape[0]  # 129 rows, row 0 is 4 kHz
    brightest = int(np.argmax(pic[:, pic.shape[1] // 2].astype(int).sum(1)))
    assert abs((bins - 1 - brightest) * rate / 2 / (bins - 1) - 1000) < 40


def test_unet_1d_shapes_patches_and_conditioning():
    net = nets.build({"kind": "unet", "dims": 1, "in_channels": 1, "channels": 16, "channel_mult": (1, 2),
                      "attention_levels": (1,), "num_res_blocks": 1, "num_classes": 10, "patch_size": 8})
    x = torch.randn(3, 1, 512)
    out = net(x, torch.zeros(3), class_labels=torch.tensor([1, 2, 3]))
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised output layer
    assert isinstance(net.stem, torch.nn.Conv1d) and net.stem.in_channels == 8
    # patches: p consecutive samples per position, and back exactly
    y = torch.arange(2 * 1 * 32.0).reshape(2, 1, 32)
    net.config.patch_size = 4
    p = net._patches(y)
    assert p.shape == (2, 4, 8) and p[0, :, 1].tolist() == [4.0, 5.0, 6.0, 7.0]
    with torch.no_grad():
        torch.nn.init.normal_(net.out.weight)
    net.config.patch_size = 8
    out = net(x, torch.zeros(3), class_labels=torch.tensor([1, 2, 3]))
    assert out.shape == x.shape and out.abs().sum() > 0
    with pytest.raises(ValueError, match="patch_size 8 must divide the sample size \\(500,\\)"):
        net(torch.randn(1, 1, 500), torch.zeros(1))


def test_spectrogram_rows_as_channels_is_the_1d_network_on_the_reshaped_input():
    """``rows``: a (C, R, T) spectrogram is read as C * R channels over time, exactly the 1-D
    network on the reshaped input, and the output comes back in the input's shape."""
    kw = {"kind": "unet", "dims": 1, "channels": 16, "channel_mult": (1, 2), "attention_levels": (1,),
          "num_res_blocks": 1, "num_classes": 3, "patch_size": 2}
    folded = nets.build({**kw, "in_channels": 1, "rows": 8})
    plain = nets.build({**kw, "in_channels": 8})
    torch.manual_seed(0)
    for prm in folded.parameters():
        torch.nn.init.normal_(prm, std=0.2)
    plain.load_state_dict(folded.state_dict())
    x, t, y = torch.randn(2, 1, 8, 12), torch.tensor([0.3, 2.0]), torch.tensor([0, 2])
    out = folded(x, t, class_labels=y)
    assert out.shape == x.shape
    torch.testing.assert_close(out, plain(x.reshape(2, 8, 12), t, class_labels=y).reshape(2, 1, 8, 12))
    with pytest.raises(ValueError, match=r"reads \(C, 8, T\) inputs \(rows 8\), got \(1, 6, 12\)"):
        folded(torch.randn(1, 1, 6, 12), t[:1])
    with pytest.raises(ValueError, match="rows .* needs dims 1"):
        nets.build({**kw, "dims": 2, "in_channels": 1, "rows": 8})


def _tone_mixture(length: int = 32) -> GaussianMixture:
    """Three 'notes': sinusoid means with stationary (exponential-kernel) covariances."""
    t = torch.arange(length, dtype=torch.float64)
    means = torch.stack([0.8 * torch.sin(2 * torch.pi * f * t / length + ph) for f, ph in ((2, 0.3), (5, 1.0), (9, 2.0))])
    lag = (t[:, None] - t[None, :]).abs()
    covs = torch.stack([s ** 2 * torch.exp(-lag / ell) for s, ell in ((0.3, 3.0), (0.5, 1.5), (0.4, 6.0))])
    return GaussianMixture(means, covs)


@pytest.mark.parametrize("name, lo, hi", [("heun", 1.8, 2.5), ("dpmpp_2m", 1.8, 2.4), ("euler", 0.85, 1.3)])
def test_samplers_converge_on_waveforms_as_on_images(name, lo, hi):
    """The same measured orders as tests/test_samplers.py, on samples of shape (1, T)."""
    x = torch.randn(8, 1, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * SMAX
    slope, errs = convergence_order(name, _tone_mixture(), x)
    assert lo <= slope <= hi, f"{name}: errors {errs}, order {slope:.2f}"
    assert errs[-1] < errs[0] / 4
