"""The encoder factory and the contract every encoder keeps: float32 (n, dim), unit norm, batched,
deterministic; audio windows with their time ranges; offline and unsafe specs fail clearly."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.data.samples import draw_image, synth_sound
from retrieval.encoders import create_encoder, init_model_dir, list_encoders
from retrieval.errors import ModelLoadError, ModelNotFoundError, WeightsUnavailableError
from tests.conftest import run_xmodal


def assert_contract(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_every_modality_keeps_the_contract(micro_encoder):
    rng = np.random.default_rng(0)
    dim = micro_encoder.dim
    assert_contract(micro_encoder.encode_text(["a red circle", "the sound of rain", "x" * 5000]), 3, dim)
    images = [draw_image(rng, 90, 60), draw_image(rng, 40, 120).convert("L"), draw_image(rng, 64, 64).convert("RGBA")]
    assert_contract(micro_encoder.encode_images(images), 3, dim)
    waves = [synth_sound(rng, 16_000, 0.3), synth_sound(rng, 44_100, 9.0)]
    assert_contract(micro_encoder.encode_audio(waves[:1]), 1, dim)
    assert_contract(micro_encoder.encode_audio(waves[1:], sample_rate=44_100), 1, dim)
    for empty in (micro_encoder.encode_text([]), micro_encoder.encode_images([]), micro_encoder.encode_audio([])):
        assert empty.shape == (0, dim) and empty.dtype == np.float32


def test_batching_does_not_change_vectors(micro_encoder):
    rng = np.random.default_rng(1)
    images = [draw_image(rng, 80, 80) for _ in range(7)]
    together = micro_encoder.encode_images(images)
    alone = np.concatenate([micro_encoder.encode_images([image]) for image in images])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    texts = ["one", "two words", "three little words"]
    np.testing.assert_allclose(micro_encoder.encode_text(texts),
                               np.concatenate([micro_encoder.encode_text([t]) for t in texts]), atol=1e-5)


def _assert_each_finds_itself(collection: np.ndarray, queries: np.ndarray) -> None:
    scores = queries @ collection.T  # (n, n)
    assert (scores.argmax(axis=1) == np.arange(len(queries))).all()
    ranked = np.sort(scores, axis=1)
    # The margin over the runner-up must dwarf float noise (~1e-6) so duplicate search is reliable.
    assert (ranked[:, -1] - ranked[:, -2]).min() > 2e-5


def test_untrained_towers_still_tell_inputs_apart(micro_encoder):
    # BatchNorm calibration at init keeps random towers from mapping everything to one direction.
    rng = np.random.default_rng(2)
    images = [draw_image(rng, 96, 96) for _ in range(20)]
    _assert_each_finds_itself(micro_encoder.encode_images(images),
                              np.concatenate([micro_encoder.encode_images([image]) for image in images]))
    sounds = [synth_sound(rng, 16_000, float(rng.uniform(0.5, 6.0))) for _ in range(12)]
    _assert_each_finds_itself(micro_encoder.encode_audio(sounds),
                              np.concatenate([micro_encoder.encode_audio([sound]) for sound in sounds]))


def test_the_same_weights_give_the_same_vectors_in_a_new_encoder(micro_model, micro_encoder):
    again = create_encoder(str(micro_model), device="cpu")
    assert again.fingerprint == micro_encoder.fingerprint
    image = draw_image(np.random.default_rng(3), 70, 50)
    np.testing.assert_allclose(again.encode_images([image]), micro_encoder.encode_images([image]), atol=1e-6)


def test_long_audio_gets_one_vector_per_overlapping_window(micro_encoder):
    front_end = micro_encoder.config.audio.front_end  # 4 s windows hopping by 2 s
    rng = np.random.default_rng(4)
    from retrieval.encoders.frontend import compute_log_mel

    long_wave = synth_sound(rng, front_end.sample_rate, 10.0)
    short_wave = synth_sound(rng, front_end.sample_rate, 1.0)
    long_clip, short_clip = micro_encoder.embed_log_mels(
        [compute_log_mel(long_wave, front_end), compute_log_mel(short_wave, front_end)], [10.0, 1.0])
    assert long_clip.ranges == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)]
    assert long_clip.windows.shape == (4, micro_encoder.dim)
    assert short_clip.ranges == [(0.0, 1.0)]
    mean = long_clip.windows.mean(axis=0)
    np.testing.assert_allclose(long_clip.pooled, mean / np.linalg.norm(mean), atol=1e-6)
    # The pooled vector of a waveform is what encode_audio returns for it.
    np.testing.assert_allclose(micro_encoder.encode_audio([long_wave])[0], long_clip.pooled, atol=1e-5)


def test_padding_frames_are_masked_out_of_the_audio_pooling(micro_encoder):
    # A short clip is padded to a full window; what lies in the padding must not change its vector
    # (beyond the convolutions' reach across the boundary), unlike frames counted as sound.
    import torch

    front_end = micro_encoder.config.audio.front_end
    rng = np.random.default_rng(5)
    from retrieval.encoders.frontend import compute_log_mel, split_windows

    windows = split_windows(compute_log_mel(synth_sound(rng, front_end.sample_rate, 1.0), front_end), 1.0, front_end)
    valid = int(windows.lengths[0])
    silent = torch.from_numpy(windows.features)
    noisy = silent.clone()
    noisy[:, :, valid:] = torch.from_numpy(rng.normal(0, 1, noisy[:, :, valid:].shape).astype(np.float32))
    tower = micro_encoder.audio_tower
    with torch.no_grad():
        masked = [torch.nn.functional.normalize(tower(x, torch.tensor([valid])), dim=-1) for x in (silent, noisy)]
        counted = [torch.nn.functional.normalize(tower(x, torch.tensor([x.shape[-1]])), dim=-1)
                   for x in (silent, noisy)]
    masked_similarity = float(masked[0] @ masked[1].T)
    counted_similarity = float(counted[0] @ counted[1].T)
    # Loud noise in the padding (production pads with silence) still leaks in a little through the
    # convolutions at the boundary; counting those frames as sound changes the vector far more.
    assert masked_similarity > counted_similarity + 0.1


def test_fingerprint_follows_the_weights(tmp_path, micro_model, micro_encoder):
    other = tmp_path / "other"
    init_model_dir(other, "micro", seed=1)
    assert create_encoder(str(other), device="cpu").fingerprint != micro_encoder.fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(micro_model, copy)
    assert create_encoder(str(copy), device="cpu").fingerprint == micro_encoder.fingerprint


def test_unknown_specs_say_what_exists(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        create_encoder("no-such-model")
    assert "ViT-B-32:laion2b_s34b_b79k" in str(error.value) and "xmodal models" in str(error.value)
    with pytest.raises(ModelNotFoundError, match="no model directory"):
        create_encoder(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelNotFoundError, match="known tags"):
        create_encoder("ViT-B-32:no_such_tag")


def test_starter_without_bundled_weights_is_a_clear_error(monkeypatch, tmp_path):
    """An installation that lost its starter files says how to get them back."""
    import retrieval.encoders.factory as factory

    monkeypatch.setattr(factory, "STARTER_DIR", tmp_path / "starter")
    with pytest.raises(ModelNotFoundError, match="starter model is missing.*xmodal train starter"):
        create_encoder("starter")


def test_offline_pretrained_fails_fast_with_one_clear_line(monkeypatch):
    import open_clip  # noqa: F401 - its import (seconds) is not what is timed

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        create_encoder("ViT-B-32:laion2b_s34b_b79k")
    assert time.monotonic() - started < 10
    # Not marked offline, but the hub does not answer: the probe gives up within seconds.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError):
        create_encoder("RN50:openai")
    assert time.monotonic() - started < 15


def test_cli_reports_an_unloadable_model_in_one_line_with_exit_code_4(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    result = run_xmodal("index", str(folder), "--db", str(tmp_path / "db"), "--model", "ViT-B-32:laion2b_s34b_b79k")
    assert result.returncode == 4
    assert result.stderr.startswith("xmodal: error: cannot download ViT-B-32:laion2b_s34b_b79k")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


class _Payload:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_a_planted_pickle_is_refused_without_being_executed(tmp_path, micro_model):
    model_dir = tmp_path / "model"
    shutil.copytree(micro_model, model_dir)
    (model_dir / "model.safetensors").unlink()
    sentinel = tmp_path / "pwned"
    (model_dir / "model.pt").write_bytes(pickle.dumps({"state_dict": _Payload(sentinel)}))
    with pytest.raises(ModelLoadError, match="refusing to load model.pt"):
        create_encoder(str(model_dir))
    assert not sentinel.exists()
    # The payload really would have run if loaded the naive way.
    pickle.loads((model_dir / "model.pt").read_bytes())
    assert sentinel.exists()


def test_damaged_or_mismatched_weights_are_load_errors(tmp_path, micro_model):
    damaged = tmp_path / "damaged"
    shutil.copytree(micro_model, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="damaged"):
        create_encoder(str(damaged))
    mismatched = tmp_path / "mismatched"
    shutil.copytree(micro_model, mismatched)
    config = json.loads((mismatched / "xmodal_model.json").read_text())
    config["audio"]["channels"] = [4, 8]
    (mismatched / "xmodal_model.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not match"):
        create_encoder(str(mismatched))


def test_list_encoders_names_starter_and_the_default_pair():
    specs = {info.spec: info for info in list_encoders()}
    assert "starter" in specs and "ViT-B-32:laion2b_s34b_b79k" in specs
    assert specs["ViT-B-32:laion2b_s34b_b79k"].available is False  # nothing is cached on these machines


def test_images_of_any_size_and_mode_are_centre_cropped_like_open_clip(micro_encoder):
    # A wide image and its centre square give the same vector: shortest-side resize, centre crop.
    rng = np.random.default_rng(6)
    square = draw_image(rng, 64, 64)
    wide = Image.new("RGB", (192, 64), (0, 0, 0))
    wide.paste(square, (64, 0))
    vectors = micro_encoder.encode_images([square, wide])
    assert float(vectors[0] @ vectors[1]) > 0.999


@pytest.mark.filterwarnings("ignore:n_fft=512 is too large")  # librosa's own, for the 0.01 s clip
@pytest.mark.parametrize("seconds", [0.01, 0.37, 1.0, 4.5])
def test_the_front_end_equals_librosas_log_mel(seconds):
    # The numpy STFT must be librosa's: same centring, padding, window, filterbank and dB floor.
    import librosa

    from retrieval.encoders.config import AudioFrontEnd
    from retrieval.encoders.frontend import compute_log_mel

    front_end = AudioFrontEnd()
    wave = synth_sound(np.random.default_rng(8), front_end.sample_rate, seconds)
    if len(wave) < front_end.win_length:
        wave = np.pad(wave, (0, front_end.win_length - len(wave)))
    power = librosa.feature.melspectrogram(
        y=wave, sr=front_end.sample_rate, n_fft=front_end.n_fft, hop_length=front_end.hop_length,
        win_length=front_end.win_length, n_mels=front_end.n_mels, fmin=front_end.fmin, fmax=front_end.fmax)
    decibels = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)
    reference = (decibels + front_end.db_offset) / front_end.db_scale
    ours = compute_log_mel(wave, front_end)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=2e-3)  # 0.04 dB: float32 FFT rounding near the floor


def test_the_gpu_patch_embedding_as_a_matrix_product_gives_the_convolutions_vectors(micro_encoder):
    import copy

    import torch
    from open_clip.model import CLIP

    from retrieval.encoders.patch_embed import use_patch_linear

    torch.manual_seed(0)
    vit = CLIP(16, {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
               {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 1, "layers": 1}).eval()
    swapped = copy.deepcopy(vit)
    assert use_patch_linear(swapped)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(swapped.encode_image(images), vit.encode_image(images), atol=1e-5, rtol=1e-4)
    assert swapped.state_dict().keys() == vit.state_dict().keys()  # weights still load by name
    assert not use_patch_linear(copy.deepcopy(micro_encoder.clip_model))  # a ResNet tower is left alone


def test_the_audio_towers_cpu_inference_gives_the_training_paths_vectors(micro_model):
    """On a CPU, inference folds each batch norm into its convolution, runs a few windows at a time
    and skips the silence padding no pooled position can see. For every valid length of a window
    the vectors must equal the plain path's, and the weights the towers train and save must not
    change."""
    import torch

    from retrieval.encoders.frontend import silence_level

    encoder = create_encoder(str(micro_model), device="cpu")
    tower, front_end = encoder.audio_tower, encoder.config.audio.front_end
    generator = torch.Generator().manual_seed(0)  # the same inputs however the tests are run
    for block in tower.blocks:  # a calibrated norm is far from the identity the fold could hide behind
        block.norm.running_mean.uniform_(-0.5, 0.5, generator=generator)
        block.norm.running_var.uniform_(0.5, 2.0, generator=generator)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    frames = 200
    lengths = torch.tensor([*range(1, frames + 1), frames, 37])
    windows = torch.randn(len(lengths), front_end.n_mels, frames, generator=generator)
    for window, length in zip(windows, lengths, strict=True):
        window[:, length:] = silence_level(front_end)  # padded as split_windows pads
    with torch.inference_mode():
        fast = tower(windows, lengths)
    with torch.enable_grad():  # eval mode, the plain modules
        plain = tower(windows, lengths).detach()
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())
