"""The conditional generator on its own: a tiny flow-matching UNet learns to draw the colour its
condition vector names, samples are seeded, guidance changes them, and only safetensors load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.config import GeneratorConfig
from generation.errors import GeneratorLoadError
from generation.flow import flow_matching_loss, sample
from generation.network import FlowUNet
from generation.storage import load_generator, save_generator

TINY = GeneratorConfig(cond_dim=8, image_size=16, channels=16, channel_mults=(1, 2), embed_dim=32, groups=4,
                       steps=8)
RED, BLUE = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)  # pixel values in [-1, 1]


def _conditions(rows: int) -> torch.Tensor:
    """Unit vectors: rows alternate between axis 0 ("red") and axis 1 ("blue")."""
    conditions = torch.zeros(rows, TINY.cond_dim)
    conditions[torch.arange(rows), torch.arange(rows) % 2] = 1.0
    return conditions


def _images(rows: int) -> torch.Tensor:
    colours = torch.tensor([RED if row % 2 == 0 else BLUE for row in range(rows)])  # (B, 3)
    return colours[:, :, None, None].expand(rows, 3, TINY.image_size, TINY.image_size).clone()


@pytest.fixture(scope="module")
def trained() -> FlowUNet:
    """Two conditions, two solid colours, 250 steps of flow matching (a few seconds on a CPU)."""
    torch.manual_seed(0)
    model = FlowUNet(TINY)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images, conditions = _images(32), _conditions(32)
    for step in range(250):
        loss = flow_matching_loss(model, images, conditions, torch.Generator().manual_seed(step))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _mean_colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1, 3).mean(axis=1)  # (B, 3) in 0..255


def test_untrained_network_outputs_zero_velocity_and_keeps_shapes():
    model = FlowUNet(GeneratorConfig(cond_dim=8, image_size=32, channels=16, groups=4))
    x = torch.randn(3, 3, 32, 32)
    velocity = model(x, torch.rand(3), torch.randn(3, 8))
    assert velocity.shape == x.shape and torch.count_nonzero(velocity) == 0  # zero-initialised head


def test_the_condition_decides_the_colour_drawn(trained):
    pixels = sample(trained, _conditions(4), seed=1)
    assert pixels.shape == (4, 16, 16, 3) and pixels.dtype == np.uint8
    red, blue, red_again, blue_again = _mean_colour(pixels)
    for colour in (red, red_again):
        assert colour[0] > 150 and colour[2] < 100, colour
    for colour in (blue, blue_again):
        assert colour[2] > 150 and colour[0] < 100, colour


def test_sampling_is_seeded_and_rows_do_not_depend_on_the_batch(trained):
    conditions = _conditions(4)
    first = sample(trained, conditions, seed=7)
    assert np.array_equal(first, sample(trained, conditions, seed=7))
    assert not np.array_equal(first, sample(trained, conditions, seed=8))
    assert np.array_equal(first[:1], sample(trained, conditions[:1], seed=7))  # candidate 0 is candidate 0


def test_guidance_weight_changes_the_picture(trained):
    conditions = _conditions(2)
    unguided = sample(trained, conditions, seed=3, guidance=1.0)
    guided = sample(trained, conditions, seed=3, guidance=4.0)
    assert not np.array_equal(unguided, guided)


def test_condition_dropout_trains_the_null_condition(trained):
    import copy

    model = copy.deepcopy(trained).train()  # a fresh network's zero head would pass no gradient back
    images, conditions = _images(8), _conditions(8)
    loss = flow_matching_loss(model, images, conditions, torch.Generator().manual_seed(0), cond_dropout=1.0)
    loss.backward()
    assert model.null_condition.grad is not None and model.null_condition.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.cond_mlp.parameters())


def test_save_and_load_round_trip_in_float16(trained, tmp_path):
    save_generator(trained, tmp_path / "gen")
    assert {p.name for p in (tmp_path / "gen").iterdir()} == {"generator.json", "model.safetensors"}
    loaded = load_generator(tmp_path / "gen")
    assert loaded.config == trained.config
    before, after = sample(trained, _conditions(2), seed=5), sample(loaded, _conditions(2), seed=5)
    assert np.abs(before.astype(int) - after.astype(int)).mean() < 2.0  # float16 storage, same pictures


def test_loading_refuses_pickles_and_damage(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    sentinel = tmp_path / "pwned"
    payload = f"import pathlib; pathlib.Path({str(sentinel)!r}).touch()"
    import pickle

    class Exploit:
        def __reduce__(self):
            return (exec, (payload,))

    (folder / "model.pt").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(GeneratorLoadError, match="pickles are never loaded"):
        load_generator(folder)
    assert not sentinel.exists()
    (folder / "generator.json").write_text(TINY.to_json())
    (folder / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(GeneratorLoadError, match="damaged"):
        load_generator(folder)
    (folder / "generator.json").write_text('{"cond_dim": 8, "colour": "red"}')
    with pytest.raises(GeneratorLoadError, match="colour"):
        load_generator(folder)


def test_config_refuses_sizes_the_levels_cannot_halve():
    with pytest.raises(ValueError, match="divisible"):
        GeneratorConfig(cond_dim=8, image_size=30, channel_mults=(1, 2, 2))


# ------------------------------------------------------------------ training for a model's space


def test_conditions_mix_image_caption_and_sound_vectors():
    from retrieval.training.generator import GeneratorData, pick_conditions

    rows = 900
    image_vectors = torch.zeros(rows, 5)
    image_vectors[:, 0] = 1
    captions = torch.zeros(rows, 2, 5)
    captions[:, 0, 1] = 1
    captions[:, 1, 2] = 1
    n_captions = torch.full((rows,), 2)
    n_captions[:100] = 0  # no captions and no sound: always the image's vector
    audio_vectors = torch.zeros(rows, 5)
    audio_vectors[:, 3] = 1
    has_audio = torch.ones(rows, dtype=torch.bool)
    has_audio[:100] = False
    has_audio[100:400] = False  # captions but no sound: image or a caption, half and half
    data = GeneratorData(torch.zeros(rows, 3, 4, 4), image_vectors, captions, n_captions, audio_vectors, has_audio)
    picked = pick_conditions(data, torch.arange(rows), torch.Generator().manual_seed(0))
    kind = picked.argmax(dim=1)  # 0: image, 1 or 2: one of the two captions, 3: the sound
    assert (kind[:100] == 0).all()
    no_sound = torch.bincount(kind[100:400], minlength=4).float() / 300
    assert 0.4 < no_sound[0] < 0.6 and 0.15 < no_sound[1] < 0.35 and 0.15 < no_sound[2] < 0.35 and no_sound[3] == 0
    everything = torch.bincount(kind[400:], minlength=4).float() / 500
    assert 0.25 < everything[0] < 0.42 and 0.25 < everything[1] + everything[2] < 0.42 and 0.25 < everything[3] < 0.42


def test_space_to_depth_patches_keep_the_image_size():
    config = GeneratorConfig(cond_dim=8, image_size=32, patch=4, channels=16, channel_mults=(1, 2), groups=4)
    model = FlowUNet(config)
    for module in model.modules():  # non-zero weights, so the output shows where each pixel comes from
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    velocity = model(x, torch.rand(2), torch.randn(2, 8))
    assert velocity.shape == x.shape
    assert torch.count_nonzero(velocity[:, :, -4:, -4:]) > 0  # the last patch's pixels are drawn too
    with pytest.raises(ValueError, match="patch"):
        GeneratorConfig(cond_dim=8, image_size=36, patch=4, channel_mults=(1, 2))


def test_train_generator_for_a_models_space(tmp_path, micro_model):
    from retrieval.encoders import create_encoder
    from retrieval.training.generator import train_generator
    from retrieval.training.loop import TrainOptions
    from tests.helpers.pairs_data import write_pairs

    pairs = write_pairs(tmp_path / "pairs", {"train": 6, "val": 2}, image_size=32)
    out = tmp_path / "generator"
    result = train_generator(pairs, str(micro_model), out, TrainOptions(epochs=2, batch_size=16, device="cpu"),
                             GeneratorConfig(cond_dim=1, image_size=16, channels=16, channel_mults=(1, 2), groups=4))
    assert result.epochs_run == 2 and result.best_score < 0  # the score is minus the validation loss
    assert {p.name for p in out.iterdir()} == {"generator.json", "model.safetensors", "training.json"}
    loaded = load_generator(out)
    encoder = create_encoder(str(micro_model), device="cpu")
    assert loaded.config.cond_dim == encoder.dim
    assert loaded.config.trained_on == {"model": str(micro_model), "fingerprint": encoder.identity.fingerprint}
    vectors = torch.from_numpy(encoder.encode_text(["a big red circle on grey"]))
    assert sample(loaded, vectors, seed=0, steps=2).shape == (1, 16, 16, 3)


def test_verified_generation_keeps_the_candidate_closest_to_the_query(micro_encoder):
    from generation.drawer import FlowDrawer
    from retrieval.generate import generate_verified

    torch.manual_seed(1)
    generator = FlowUNet(GeneratorConfig(cond_dim=micro_encoder.dim, image_size=16, channels=16, channel_mults=(1, 2),
                                         groups=4, steps=3)).eval()
    for module in generator.modules():  # random, non-zero weights: candidates that differ
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.2)
    query = micro_encoder.encode_text(["a big red circle on grey"])[0]
    made = generate_verified(FlowDrawer(generator, "random", "0"), micro_encoder, query, candidates=4, seed=3)
    assert len(set(made.candidate_scores)) == 4 and made.score == max(made.candidate_scores)
    drawn = sample(generator, torch.from_numpy(np.repeat(query[None], 4, axis=0)), seed=3)
    assert np.array_equal(made.pixels, drawn[made.candidate])
    # The reported score is what the image tower says of the kept picture, resized as indexing would.
    from retrieval.generate import _to_encoder_size

    again = micro_encoder.encode_pixels(_to_encoder_size(made.pixels[None], micro_encoder.inputs.image_size))[0]
    assert float(again @ query) == pytest.approx(made.score, abs=1e-5)


def test_the_starter_recipe_trains_checks_and_documents_its_generator(tmp_path, micro_model):
    """The recipe's generator stage, on a micro model and a tiny corpus: the generator lands in
    OUT/generator for exactly that model, with the benchmark's figures in its card."""
    import json
    import shutil

    from generation.drawer import FlowDrawer
    from retrieval.training.loop import TrainOptions
    from retrieval.training.starter import StarterRecipe, _generator_stage
    from tests.helpers.pairs_data import write_pairs

    out = tmp_path / "model"
    shutil.copytree(micro_model, out)
    pairs = write_pairs(tmp_path / "pairs", {"train": 6, "val": 2}, image_size=32)
    recipe = StarterRecipe(generator=TrainOptions(epochs=1, batch_size=8, device="cpu", max_minutes=5),
                           generator_config=GeneratorConfig(cond_dim=1, image_size=16, patch=2, channels=16,
                                                            channel_mults=(1, 2), groups=4, steps=2),
                           generator_check_limit=6)
    stages = []
    _generator_stage(out, tmp_path / "work", pairs, recipe, 1, stages.append, None, None)
    assert stages == ["training the fallback generator", "checking what the generator draws"]
    folder = out / "generator"
    report = json.loads((folder / "bench-generate.json").read_text())
    asked = sum(kind["queries"] for group in report["groups"].values() for kind in group.values())
    assert asked == 2 * 6  # each concept checked from words and from a sound
    card = (folder / "README.md").read_text()
    assert "## Figures" in card and "| text | 6 |" in card and "--patch 2 --channels 16" in card
    from types import SimpleNamespace

    from retrieval.compose import _flow_drawer
    from retrieval.encoders import create_encoder

    engine = SimpleNamespace(encoder=create_encoder(str(out), device="cpu"))  # what _flow_drawer reads
    assert isinstance(_flow_drawer(engine, folder, "starter/generator"), FlowDrawer)  # made for this model
    stages.clear()
    _generator_stage(out, tmp_path / "work", pairs, recipe, 1, stages.append, None, None)
    assert stages == ["checking what the generator draws"]  # a rerun resumes: nothing trained twice


def test_configs_saved_before_patches_existed_load_as_they_were_trained():
    import json

    old = json.loads(TINY.to_json())
    del old["patch"]
    assert GeneratorConfig.from_json(json.dumps(old)).patch == 1  # not today's default
    with pytest.raises(ValueError, match="unknown"):
        GeneratorConfig.from_json(json.dumps({**old, "prediction": "noise"}))
