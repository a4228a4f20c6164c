"""Sound as data: the built-in sets (spoken digits, notes), folders of sound files, the log-mel
transform and its inversion, against exact expectations."""
import math
import warnings

import numpy as np
import pytest
import soundfile
import torch

from undiffuse import data
from undiffuse.data import audio, notes, speech
from undiffuse.data.spectral import MelSpec, mel_filterbank

# two training voices, one held-out espeak-ng voice and one flite voice: 10 digits x (3 x 3 + 12) takes
SMALL_VOICES = ["espeak-ng:en-us+m1", "espeak-ng:en-gb+f2", "espeak-ng:en-us+m3", "flite:kal"]


@pytest.fixture
def small_voices(monkeypatch):
    monkeypatch.setattr(speech, "voices", lambda: list(SMALL_VOICES))


def test_fit_clip_trims_normalises_and_centres():
    rate, clip = 8000, 8192
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2000) / rate)
    padded = np.concatenate([np.zeros(1000), tone, np.zeros(3000)])
    out = audio.fit_clip(padded, rate, clip)
    nz = np.nonzero(out)[0]
    assert len(out) == clip and np.isclose(np.abs(out).max(), audio.PEAK)
    assert abs((nz[0] + nz[-1]) / 2 - clip / 2) <= 80  # centred (to a 10 ms frame)
    assert 1900 <= len(nz) <= 2000
    assert audio.fit_clip(np.zeros(500), rate, clip) is None
    assert audio.fit_clip(np.ones(clip + 100) * 0.5, rate, clip) is None


def test_resample_keeps_a_tone_and_its_level():
    x = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
    y = audio.resample(x, 22050, 8000)
    assert len(y) == 8000
    spectrum = np.abs(np.fft.rfft(y[1000:7000] * np.hanning(6000)))
    assert abs(np.argmax(spectrum) * 8000 / 6000 - 440) < 2
    assert abs(np.sqrt(np.mean(y[500:-500] ** 2)) - math.sqrt(0.5)) < 0.01


def test_clip_length_per_rate_and_unsupported_rate():
    assert audio.clip_samples_for(8000) == 8192 and audio.clip_samples_for(16000) == 16384
    with pytest.raises(data.DataError, match="sample rate 11025 .*allowed: 8000, 16000"):
        audio.clip_samples_for(11025)


def test_notes_are_deterministic_labelled_and_fitted():
    a = data.load("notes")
    assert a.kind == "audio" and a.shape == (1, 8192) and len(a) == 12 * 3 * 5 * 3 * notes.TAKES
    assert a.class_names[9] == "A" and set(a.labels.tolist()) == set(range(12))
    x = a.get(slice(0, 64))
    assert x.dtype == torch.float32 and x.abs().max() <= 0.9 + 1e-4
    assert torch.equal(a.storage, data.load("notes").storage)
    # the pitch is the label: an A4 sine's spectrum peaks at 440 Hz (+-15 cents detune)
    f = a.info["factors"]
    i = next(k for k in range(len(a)) if a.labels[k] == 9 and f["octave"][k] == 4 and f["timbre"][k] == "sine")
    s = np.abs(np.fft.rfft(a.get(i)[0].numpy()))
    assert abs(np.argmax(s) * 8000 / 8192 - 440) < 440 * (2 ** (16 / 1200) - 1) + 1


def _pitch_classes_heard(x: np.ndarray, count: int) -> set[int]:
    """Pitch classes of the ``count`` strongest spectral peaks of a clip (8 kHz)."""
    s = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peaks = [k for k in range(1, len(s) - 1) if s[k] >= s[k - 1] and s[k] >= s[k + 1]]
    top = sorted(peaks, key=lambda k: -s[k])[:count]
    return {round(12 * np.log2(k * 8000 / len(x) / 440.0) + 9) % 12 for k in top}


def test_chords_sound_their_notes_and_labels_follow_the_suffix():
    c = data.load("chords")
    assert len(c) == 12 * len(notes.QUALITIES) * 5 * 3 * notes.CHORD_TAKES and c.shape == (1, 8192)
    assert c.class_names == list(notes.QUALITIES) and c.info["labels"] == "quality"
    f = c.info["factors"]
    sines = [k for k in range(len(c)) if f["timbre"][k] == "sine" and f["envelope"][k] == "sustained"][::7]
    for k in sines:  # a sine chord's three strongest peaks are its three notes, whatever the inversion
        root = notes.NOTE_NAMES.index(f["root"][k])
        want = {(root + i) % 12 for i in notes.QUALITIES[f["quality"][k]]}
        assert _pitch_classes_heard(c.get(k)[0].numpy(), 3) == want, (k, f["root"][k], f["quality"][k])
    by_root = data.load("chords:root")
    assert by_root.class_names == list(notes.NOTE_NAMES)
    assert [by_root.class_names[i] for i in by_root.labels[:40]] == f["root"][:40]
    assert torch.equal(by_root.storage, c.storage)
    # every wording names every factor of its clip
    k = 123
    for cap in c.captions[k]:
        root = f["root"][k]
        assert (root in cap or notes.SPOKEN.get(root, root) in cap) and f["timbre"][k] in cap.replace("plucked string", "pluck").replace(
            "sine tone", "sine").replace("sawtooth synth", "saw")
    with pytest.raises(data.DataError, match="chords:pitch: unknown labels 'pitch'; allowed: chords:quality, "
                                             "chords:root, chords:timbre"):
        data.load("chords:pitch")


def test_notes_labels_by_factor_with_captions():
    n = data.load("notes:envelope")
    assert n.class_names == list(notes.ENVELOPES)
    assert [notes.ENVELOPES[i] for i in n.labels] == n.info["factors"]["envelope"]
    octaves = data.load("notes:octave")
    assert octaves.class_names == ["3", "4", "5"]
    assert [int(octaves.class_names[i]) for i in octaves.labels] == n.info["factors"]["octave"]
    k = 500
    pitch, octave = n.info["factors"]["pitch"][k], n.info["factors"]["octave"][k]
    assert len(n.captions[k]) == 3 and f"{pitch}{octave}" in n.captions[k][0]
    assert len({tuple(c) for c in n.captions}) == len(n) // notes.TAKES  # takes share captions, nothing else does
    with pytest.raises(data.DataError, match="notes:loudness: unknown labels"):
        data.load("notes:loudness")


def test_spoken_digits_split_by_voice_and_cache(small_voices, monkeypatch):
    train = data.load("spoken-digits")
    held = data.load("spoken-digits:heldout")
    both = data.load("spoken-digits:all")
    assert train.kind == "audio" and train.shape == (1, 8192) and train.class_names[7] == "seven"
    assert len(held) == 10 * speech.ESPEAK_TAKES  # en-us+m3 is a held-out variant
    assert len(train) == 10 * (2 * speech.ESPEAK_TAKES + speech.FLITE_TAKES)
    assert len(both) == len(train) + len(held)
    assert not set(train.info["voices"]) & set(held.info["voices"])
    assert held.info["voices"] == ["espeak-ng:en-us+m3"]
    assert sorted(set(train.labels.tolist())) == list(range(10))
    x = train.get(slice(None))
    assert x.abs().amax(dim=-1).min() > 0.85  # every clip is speech at its peak level, none silent
    # the second load reads the cache: rendering again would fail
    monkeypatch.setattr(speech, "render", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rendered again")))
    assert torch.equal(data.load("spoken-digits").storage, train.storage)
    with pytest.raises(data.DataError, match="unknown split 'test'"):
        data.load("spoken-digits:test")


def test_spoken_digits_without_engines_says_how_to_install(small_voices, monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None if name == "flite" else "/usr/bin/" + name)
    with pytest.raises(data.DataError, match=r"flite is not installed\. Install them with: sudo apt-get install espeak-ng flite"):
        data.load("spoken-digits")


def test_held_out_rule():
    assert speech.is_heldout("espeak-ng:en-gb-scotland+f4") and speech.is_heldout("flite:awb")
    assert not speech.is_heldout("espeak-ng:en-gb+f1") and not speech.is_heldout("flite:kal")
    held = [v for v in speech.voices() if speech.is_heldout(v)]
    assert len(held) == 2 * len(speech.ACCENTS) + 1


def _write(path, x, rate, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), x, rate, **kw)


def test_audio_folder_classes_resampling_and_bad_files(tmp_path):
    t = np.arange(16000) / 16000
    tone = lambda f: 0.5 * np.sin(2 * np.pi * f * t[:6000])  # noqa: E731
    _write(tmp_path / "low" / "a.wav", tone(220), 16000)
    _write(tmp_path / "low" / "b.flac", tone(230), 16000)
    _write(tmp_path / "high" / "c.ogg", tone(880), 16000, format="OGG", subtype="VORBIS")
    _write(tmp_path / "high" / "long.wav", 0.5 * np.sin(2 * np.pi * 880 * np.arange(40000) / 16000), 16000)
    (tmp_path / "high" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (tmp_path / "high" / "empty.flac").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load(str(tmp_path))
    messages = "\n".join(str(w.message) for w in caught)
    assert "broken.wav: skipped (cannot decode audio" in messages
    assert "empty.flac: skipped" in messages
    assert "long.wav: skipped (silent, or longer than the clip of 8192 samples (1.024 s)" in messages
    assert ds.kind == "audio" and len(ds) == 3 and ds.class_names == ["high", "low"]
    assert ds.labels.tolist() == [0, 1, 1]  # sorted paths: high/c.ogg, low/a.wav, low/b.flac
    s = np.abs(np.fft.rfft(ds.get(1)[0].numpy()))
    assert abs(np.argmax(s) * 8000 / 8192 - 220) < 2  # resampled 16 kHz -> 8 kHz, pitch kept
    with pytest.raises(data.DataError, match="broken.wav: cannot decode audio"):
        data.load(str(tmp_path), strict=True)


def test_mel_filterbank_has_unit_area_triangles():
    fb = mel_filterbank(8000, 256, 64, 40.0, 4000.0)
    assert fb.shape == (64, 129) and (fb >= 0).all()
    bin_hz = 4000 / 128
    wide = fb[32:]  # wide enough filters for the bin sum to approximate the integral
    assert torch.allclose(wide.sum(1) * bin_hz, torch.ones(32, dtype=torch.float64), atol=0.05)
    assert (fb.argmax(1).diff() >= 0).all()  # centres rise with the band index


def test_mel_round_trip_error_is_small():
    """Stated round-trip error: mel magnitude spectral convergence of the re-analysed clip after
    fast Griffin-Lim (measured 0.03-0.04 on speech and notes at 64 iterations)."""
    spec = MelSpec()
    digits = data.load("notes")
    x = digits.get(slice(0, 720, 45))
    m = spec.encode(x)
    assert m.shape == (16, 1, 64, 64) and m.min() >= -1 and m.max() <= 1
    y = spec.decode(m, iterations=64)
    assert y.shape == x.shape and y.abs().max() <= 1
    a, b = (10 ** (spec.mel_db(v) / 20) for v in (x, y))
    convergence = float((a - b).norm() / a.norm())
    assert convergence < 0.1, convergence
    few = spec.decode(m, iterations=2)
    assert float((a - 10 ** (spec.mel_db(few) / 20)).norm() / a.norm()) > convergence  # the iterations matter


def test_mel_representation_dataset():
    ds = data.load("notes", representation="mel")
    assert ds.kind == "audio" and ds.shape == (1, 64, 64)
    assert ds.info["audio"]["representation"] == "mel" and ds.info["audio"]["mel"]["n_mels"] == 64
    wave = data.load("notes")
    assert torch.allclose(ds.get(slice(0, 4)), MelSpec().encode(wave.get(slice(0, 4))))
    with pytest.raises(data.DataError, match="representation 'stft' is not supported; allowed: wave, mel"):
        data.load("notes", representation="stft")
