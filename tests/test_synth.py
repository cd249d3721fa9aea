"""The synthetic world and its corpus: every attribute is carried by the picture, the captions and the
sound; held-out combinations never leak into training; a seed gives the same bytes on any number of
workers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from retrieval.data import world
from retrieval.data.synth import write_corpus
from tests.conftest import run_xmodal

RATE = world.SAMPLE_RATE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    write_corpus(out, n=60, seed=0, workers=1)
    return out


def read_pairs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


def file_bytes(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def test_a_seed_gives_the_same_bytes_on_any_number_of_workers_and_another_seed_differs(corpus, tmp_path):
    write_corpus(tmp_path / "again", n=60, seed=0, workers=2)
    assert file_bytes(tmp_path / "again") == file_bytes(corpus)
    write_corpus(tmp_path / "other", n=60, seed=1, workers=1)
    other = file_bytes(tmp_path / "other")
    assert other.keys() == file_bytes(corpus).keys()
    assert other["pairs.jsonl"] != file_bytes(corpus)["pairs.jsonl"]
    assert other["images/train-000000.png"] != file_bytes(corpus)["images/train-000000.png"]
    assert other["audio/train-000000.wav"] != file_bytes(corpus)["audio/train-000000.wav"]


def test_splits_keep_heldout_combinations_out_of_train_and_test(corpus):
    pairs = read_pairs(corpus)
    assert [pair["split"] for pair in pairs] == ["train"] * 48 + ["test"] * 6 + ["heldout"] * 6
    assert len({pair["id"] for pair in pairs}) == 60
    seen = {concept.key for concept in world.seen_concepts()}
    heldout = {concept.key for concept in world.heldout_concepts()}
    for pair in pairs:
        concept = world.Concept.from_attributes(pair["attributes"])
        assert pair["concept"] == concept.key
        assert concept.key in (heldout if pair["split"] == "heldout" else seen)
    # Concepts are dealt from permutations: no concept twice before all have been used once.
    train = [pair["concept"] for pair in pairs if pair["split"] == "train"]
    assert len(set(train)) == len(train)
    description = json.loads((corpus / "corpus.json").read_text())
    assert description["counts"] == {"train": 48, "test": 6, "heldout": 6}
    assert {tuple(pair) for pair in description["heldout_pairs"]} == world.HELDOUT_PAIRS
    assert description["attributes"]["colour"] == list(world.COLOURS)


def test_every_file_in_pairs_exists_and_loads(corpus):
    pairs = read_pairs(corpus)
    for pair in pairs:
        with Image.open(corpus / pair["image"]) as image:
            assert image.mode == "RGB" and image.size == (128, 128)
        wave, rate = soundfile.read(corpus / pair["audio"], dtype="float32")
        assert rate == RATE and wave.ndim == 1 and 0.6 < len(wave) / RATE < 1.8
        assert len(pair["captions"]) == 3
    assert len(list((corpus / "images").iterdir())) == len(list((corpus / "audio").iterdir())) == len(pairs)


def test_refuses_a_folder_that_is_not_empty_and_a_tiny_corpus(corpus, tmp_path):
    before = file_bytes(corpus)
    with pytest.raises(FileExistsError):
        write_corpus(corpus, n=60)
    assert file_bytes(corpus) == before
    with pytest.raises(ValueError, match="at least 30"):
        write_corpus(tmp_path / "tiny", n=29)


def test_the_world_has_a_fixed_heldout_set_covering_every_colour_and_shape():
    concepts = world.all_concepts()
    assert len(concepts) == 384 and len({concept.key for concept in concepts}) == 384
    assert len(world.seen_concepts()) == 320 and len(world.heldout_concepts()) == 64
    assert sorted(colour for _, colour in world.HELDOUT_PAIRS) == sorted(world.COLOURS)
    assert {shape for shape, _ in world.HELDOUT_PAIRS} == set(world.SHAPES)
    assert world.Concept.from_attributes(concepts[5].attributes) == concepts[5]
    with pytest.raises(ValueError, match="unknown colour"):
        world.Concept("circle", "gold", "big", "grey")


def template_patterns() -> list[re.Pattern]:
    patterns = []
    for template in world.TEMPLATES:
        pattern = re.escape(template).replace(r"a\ ", r"an?\ ")
        for name in world.ATTRIBUTES:
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[a-z-]+)")
        patterns.append(re.compile(pattern + "$"))
    return patterns


def parse_caption(text: str) -> tuple[int, dict[str, str]]:
    """(template index, attributes) read back from a caption through the synonym tables."""
    for index, pattern in enumerate(template_patterns()):
        if match := pattern.match(text):
            words = match.groupdict()
            attributes = {}
            for name, table in world.SYNONYMS.items():
                values = [value for value, synonyms in table.items() if words[name] in synonyms]
                assert len(values) == 1, f"{words[name]!r} in {text!r} names no single {name}"
                attributes[name] = values[0]
            return index, attributes
    raise AssertionError(f"caption matches no template: {text!r}")


def test_every_caption_names_all_four_attributes_through_synonyms():
    for position, concept in enumerate(world.all_concepts()):
        for text in world.captions(concept, np.random.default_rng(position), k=3):
            assert text == text.lower() and not re.search(r"\ba [aeiou]|\ban [^aeiou]", text)
            assert parse_caption(text)[1] == concept.attributes
        assert parse_caption(world.canonical_caption(concept)) == (0, concept.attributes)


def test_captions_vary_in_words_and_word_order():
    concept = world.Concept("star", "purple", "small", "stripes")
    parsed = [parse_caption(text) for seed in range(60)
              for text in world.captions(concept, np.random.default_rng(seed))]
    assert len({index for index, _ in parsed}) >= 4
    for seed in range(20):  # the k captions of one item use distinct templates
        texts = world.captions(concept, np.random.default_rng(seed), k=3)
        assert len({parse_caption(text)[0] for text in texts}) == 3
    words = " ".join(world.caption(concept, np.random.default_rng(seed)) for seed in range(60)).split()
    assert len(set(words) & set(world.SYNONYMS["colour"]["purple"])) >= 2
    assert len(set(words) & set(world.SYNONYMS["background"]["stripes"])) >= 2


def dominant_frequency(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave, 4 * RATE))  # zero-padded to 0.25 Hz bins
    return float(np.fft.rfftfreq(4 * RATE, 1 / RATE)[spectrum.argmax()])


def semitones(frequency: float, reference: float) -> float:
    return 12 * np.log2(frequency / reference)


@pytest.mark.parametrize("shape", world.SHAPES)
def test_pitch_rises_with_the_colour_for_every_shape(shape):
    peaks = []
    for k, colour in enumerate(world.COLOURS):
        wave = world.render_sound(world.Concept(shape, colour, "big", "grey"), np.random.default_rng(k))
        peaks.append(dominant_frequency(wave))
        assert abs(semitones(peaks[-1], world.colour_pitch(colour))) < 0.3
    assert peaks == sorted(peaks)


def test_big_sounds_are_longer_and_louder_than_small_ones():
    clips = {size: [world.render_sound(world.Concept(shape, "cyan", size, "grey"), np.random.default_rng(seed))
                    for shape in world.SHAPES for seed in range(4)] for size in world.SIZES}
    assert min(len(clip) for clip in clips["big"]) > max(len(clip) for clip in clips["small"])
    assert min(np.abs(clip).max() for clip in clips["big"]) > 1.5 * max(np.abs(clip).max() for clip in clips["small"])


def band_energy(wave: np.ndarray, low: float, high: float) -> float:
    spectrum = np.fft.rfft(wave * np.hanning(len(wave)))  # windowed: no leakage from a cut-off rumble
    frequencies = np.fft.rfftfreq(len(wave), 1 / RATE)
    return float(np.sum(np.abs(spectrum[(frequencies >= low) & (frequencies < high)]) ** 2))


def test_the_background_is_heard_in_the_silence_around_the_note():
    def tail(background: str, seed: int) -> np.ndarray:
        wave = world.render_sound(world.Concept("triangle", "blue", "small", background), np.random.default_rng(seed))
        return wave[-int(0.06 * RATE):]  # after the note: only the background remains

    for seed in range(5):
        grey, white, black = tail("grey", seed), tail("white", seed), tail("black", seed)
        assert np.std(white) > 10 * np.std(grey)  # hiss
        assert band_energy(black, 20, 200) > 1000 * band_energy(grey, 20, 200)  # rumble...
        assert band_energy(black, 1000, 8000) < 10 * band_energy(grey, 1000, 8000)  # ...that stays low


def test_striped_backgrounds_click_about_twelve_times_a_second():
    frame = int(0.005 * RATE)
    for seed in range(4):
        wave = world.render_sound(world.Concept("circle", "red", "big", "stripes"), np.random.default_rng(seed))
        spectrum = np.fft.rfft(wave)
        spectrum[np.fft.rfftfreq(len(wave), 1 / RATE) < 3000] = 0  # far above the note's harmonics
        high = np.fft.irfft(spectrum, len(wave))[: len(wave) // frame * frame]
        energy = (high**2).reshape(-1, frame).sum(axis=1)  # (frames,) of 5 ms
        energy -= energy.mean()
        correlation = np.correlate(energy, energy, "full")[len(energy) - 1:]
        lags = np.arange(len(correlation)) * frame / RATE
        window = (lags > 0.05) & (lags < 0.15)
        period = lags[window][correlation[window].argmax()]
        assert 1 / 14.5 < period < 1 / 9.5
        grey = world.render_sound(world.Concept("circle", "red", "big", "grey"), np.random.default_rng(seed))
        assert band_energy(wave, 3000, 8000) > 100 * band_energy(grey, 3000, 8000)


def object_pixels(image: Image.Image) -> np.ndarray:
    """Pixels of the coloured object: backgrounds are grey (equal channels), every colour is saturated."""
    pixels = np.asarray(image, dtype=np.float64)
    return (pixels.max(axis=2) - pixels.min(axis=2)) > 60


def test_pictures_show_the_colour_size_and_a_whole_shape():
    palette = np.array([world.COLOUR_RGB[colour] for colour in world.COLOURS], dtype=np.float64)
    areas = {"small": [], "big": []}
    for seed, concept in enumerate(world.all_concepts()):
        image = world.render_image(concept, np.random.default_rng(seed), size=64)
        assert image.size == (64, 64) and image.mode == "RGB"
        mask = object_pixels(image)
        mean = np.asarray(image, dtype=np.float64)[mask].mean(axis=0)
        assert world.COLOURS[np.linalg.norm(palette - mean, axis=1).argmin()] == concept.colour, concept.key
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
        areas[concept.size].append(mask.mean())
    assert min(areas["big"]) > max(areas["small"])


def test_the_command_writes_a_corpus_and_refuses_to_overwrite_it(tmp_path):
    out = tmp_path / "corpus"
    result = run_xmodal("data", "synth", str(out), "--n", "40", "--seed", "3", check=True)
    assert re.fullmatch(rf"wrote 40 items \(train 32, test 4, heldout 4\) under {re.escape(str(out))} in "
                        r"\d+\.\d s\n", result.stdout)
    pairs = read_pairs(out)
    assert len(pairs) == 40 and all((out / pair["image"]).is_file() and (out / pair["audio"]).is_file()
                                    for pair in pairs)
    assert json.loads((out / "corpus.json").read_text())["seed"] == 3
    again = run_xmodal("data", "synth", str(out), "--n", "40")
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr == f"xmodal: error: refusing to write a corpus into a folder that is not empty: {out}\n"
