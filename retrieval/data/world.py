"""A compositional toy world: 6 shapes x 8 colours x 2 sizes x 4 backgrounds = 384 concepts, each
shown as a picture, told by captions with synonyms, and carried by a sound.

Every attribute has its own cue in every modality, so towers trained on the corpus must learn all
four and can be tested on combinations they never saw (HELDOUT_PAIRS, fixed for every seed):

    attribute   image                          sound
    shape       outline                        timbre and envelope
    colour      object RGB                     pitch (minor-third steps from 196 Hz)
    size        radius                         length and loudness
    background  grey / white / black / stripes clean / hiss / low rumble / 12 Hz clicks

The cues are sized for a log-mel front end (16 kHz, 64 mels, 20-8000 Hz, 10 ms hop) and a 64 px
image tower. Renderers take a numpy Generator and draw nothing else, so an item can be made
anywhere from its own seed. Pure numpy and PIL.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "big")
BACKGROUNDS = ("grey", "white", "black", "stripes")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "background": BACKGROUNDS}

# (shape, colour): every colour once, every shape at least once; all sizes and backgrounds held out.
HELDOUT_PAIRS = frozenset({
    ("circle", "green"), ("square", "red"), ("triangle", "blue"), ("star", "yellow"),
    ("cross", "purple"), ("hexagon", "orange"), ("circle", "pink"), ("triangle", "cyan"),
})

# Single words (a 16-token text tower must see the whole caption), no word shared between attributes.
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disc", "dot"), "square": ("square", "box", "block"),
        "triangle": ("triangle", "wedge"), "star": ("star", "pentagram"),
        "cross": ("cross", "plus"), "hexagon": ("hexagon", "hex"),
    },
    "colour": {
        "red": ("red", "crimson", "scarlet"), "orange": ("orange", "amber", "tangerine"),
        "yellow": ("yellow", "golden", "lemon"), "green": ("green", "emerald", "lime"),
        "cyan": ("cyan", "turquoise", "aqua"), "blue": ("blue", "cobalt", "sapphire"),
        "purple": ("purple", "violet", "plum"), "pink": ("pink", "rose", "fuchsia"),
    },
    "size": {"small": ("small", "little", "tiny"), "big": ("big", "large", "huge")},
    # Adjectives: every template says "<adjective> background/backdrop" or "the background is <adjective>".
    "background": {
        "grey": ("grey", "gray", "slate"), "white": ("white", "snowy", "pale"),
        "black": ("black", "dark", "inky"), "stripes": ("striped", "stripy", "lined"),
    },
}
TEMPLATES = (
    "a {size} {colour} {shape} on a {background} background",
    "{size} {colour} {shape}, {background} background",
    "a {colour} {shape} that is {size}, against a {background} backdrop",
    "{background} background with a {size} {colour} {shape}",
    "a {size} {shape} coloured {colour} on a {background} backdrop",
    "the {shape} is {size} and {colour}; the background is {background}",
)

# Far apart in RGB and hue so red/orange/pink/purple survive 64 px and +-12 jitter.
COLOUR_RGB = {
    "red": (215, 25, 30), "orange": (250, 140, 0), "yellow": (240, 225, 25), "green": (30, 165, 45),
    "cyan": (0, 205, 215), "blue": (35, 65, 225), "purple": (125, 35, 175), "pink": (255, 125, 195),
}
BACKGROUND_LEVEL = {"grey": 128, "white": 235, "black": 20}
STRIPE_LEVELS = (115, 190)


@dataclass(frozen=True, order=True)
class Concept:
    shape: str
    colour: str
    size: str
    background: str

    def __post_init__(self) -> None:
        for name, allowed in ATTRIBUTES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(allowed)}")

    @property
    def key(self) -> str:
        """Canonical, unique name, e.g. "big red circle on stripes"."""
        return f"{self.size} {self.colour} {self.shape} on {self.background}"

    @property
    def attributes(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_attributes(cls, attributes: dict[str, str]) -> Concept:
        return cls(**{name: attributes[name] for name in ATTRIBUTES})


def all_concepts() -> list[Concept]:
    """All 384 concepts, shape-major in attribute order."""
    return [Concept(*values) for values in itertools.product(SHAPES, COLOURS, SIZES, BACKGROUNDS)]


def is_heldout(concept: Concept) -> bool:
    return (concept.shape, concept.colour) in HELDOUT_PAIRS


def seen_concepts() -> list[Concept]:
    """The 320 concepts that training and test items use."""
    return [concept for concept in all_concepts() if not is_heldout(concept)]


def heldout_concepts() -> list[Concept]:
    """The 64 concepts never seen in training (all sizes and backgrounds of HELDOUT_PAIRS)."""
    return [concept for concept in all_concepts() if is_heldout(concept)]


# ---------------------------------------------------------------------------------------------
# Captions


def caption(concept: Concept, rng: np.random.Generator, template: int | None = None) -> str:
    """One lower-case caption: a template (random unless given) filled with random synonyms."""
    index = int(rng.integers(len(TEMPLATES))) if template is None else template
    words = {name: str(rng.choice(SYNONYMS[name][value])) for name, value in concept.attributes.items()}
    return _fix_articles(TEMPLATES[index].format(**words))


def captions(concept: Concept, rng: np.random.Generator, k: int = 3) -> list[str]:
    """`k` captions from distinct templates, each with its own synonyms."""
    if not 1 <= k <= len(TEMPLATES):
        raise ValueError(f"k must be 1..{len(TEMPLATES)}, got {k}")
    return [caption(concept, rng, int(index)) for index in rng.choice(len(TEMPLATES), k, replace=False)]


def canonical_caption(concept: Concept) -> str:
    """The caption with base words and the first template, e.g. for demos and zero-shot prompts."""
    words = {name: SYNONYMS[name][value][0] for name, value in concept.attributes.items()}
    return _fix_articles(TEMPLATES[0].format(**words))


def _fix_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# ---------------------------------------------------------------------------------------------
# Images

SUPERSAMPLE = 4  # the shape mask is drawn at 4x and box-filtered down: antialiased edges


def render_image(concept: Concept, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """The concept as an RGB picture of `size` x `size` pixels, with random pose, jitter and noise."""
    background = _background(concept.background, rng, size)  # (H, W, 1) float32
    mask = _shape_mask(concept, rng, size)[..., None]  # (H, W, 1) in [0, 1]
    rgb = (np.asarray(COLOUR_RGB[concept.colour]) + rng.uniform(-12, 12, 3)).astype(np.float32)  # (3,)
    pixels = background + mask * (rgb - background)  # (H, W, 3)
    pixels += rng.standard_normal((size, size, 3), dtype=np.float32) * 5
    pixels += 0.5  # round half up on the uint8 cast below
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _background(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if name != "stripes":
        level = BACKGROUND_LEVEL[name] + rng.uniform(-8, 8)
        return np.full((size, size, 1), level, dtype=np.float32)
    # Stripes at a random angle, period 9-15 % of the image (>= 5 px at 64 px), random phase; a soft
    # triangle-wave edge of about one pixel keeps them free of aliasing.
    angle = rng.uniform(0, np.pi)
    period = size * rng.uniform(0.09, 0.15)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    position = (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 1)
    wave = np.abs(((position % 1.0) - 0.5) * 2)  # 0..1..0 across one period
    light = np.clip((wave - 0.5) * period / 2 + 0.5, 0, 1)  # a 1 px ramp between the two greys
    dark, bright = (level + rng.uniform(-8, 8) for level in STRIPE_LEVELS)
    return (dark + (bright - dark) * light)[..., None].astype(np.float32)


def _shape_outline(shape: str, radius: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon vertices around (0, 0); None for the circle."""
    def ring(count: int, radii: tuple[float, ...]) -> list[tuple[float, float]]:
        steps = count * len(radii)
        return [(radii[i % len(radii)] * radius * np.cos(angle + 2 * np.pi * i / steps),
                 radii[i % len(radii)] * radius * np.sin(angle + 2 * np.pi * i / steps)) for i in range(steps)]

    if shape == "circle":
        return None
    if shape in ("square", "triangle", "hexagon"):
        return ring({"square": 4, "triangle": 3, "hexagon": 6}[shape], (1.0,))
    if shape == "star":
        return ring(5, (1.0, 0.45))
    # cross: a plus sign whose arms are 0.7 radius wide (0.35 either side of the axis)
    arm, half = radius, 0.35 * radius
    corners = [(half, -half), (arm, -half), (arm, half), (half, half), (half, arm), (-half, arm), (-half, half),
               (-arm, half), (-arm, -half), (-half, -half), (-half, -arm), (half, -arm)]
    cos, sin = np.cos(angle), np.sin(angle)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in corners]


def _shape_mask(concept: Concept, rng: np.random.Generator, size: int) -> np.ndarray:
    low, high = (0.14, 0.19) if concept.size == "small" else (0.30, 0.38)
    radius = rng.uniform(low, high) * size * SUPERSAMPLE
    outline = _shape_outline(concept.shape, radius, rng.uniform(0, 2 * np.pi))
    points = np.array(outline) if outline is not None else np.array([[-radius, -radius], [radius, radius]])
    canvas = size * SUPERSAMPLE
    margin = 0.02 * canvas  # keep the whole shape inside, a little off the border
    low_corner, high_corner = points.min(axis=0), points.max(axis=0)
    centre = rng.uniform(margin - low_corner, canvas - margin - high_corner)
    image = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(image)
    placed = [tuple(point) for point in (points + centre).tolist()]
    if outline is None:
        draw.ellipse([placed[0], placed[1]], fill=255)
    else:
        draw.polygon(placed, fill=255)
    return np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Sounds

SAMPLE_RATE = 16_000
BASE_PITCH = 196.0  # G3; colour k sounds at 196 * 2**(3k/12): 196 .. 659 Hz
HARMONIC_LIMIT = 7_500.0  # below the 8 kHz top mel band and Nyquist
BELL_RATIOS = (1.0, 2.4, 3.9, 5.4)
BELL_AMPLITUDES = (1.0, 0.55, 0.35, 0.22)


def write_sound(target, concept: Concept, rng: np.random.Generator) -> None:
    """Render `concept`'s sound and write it as a 16-bit WAV to `target` (a path or a binary file)."""
    import soundfile

    soundfile.write(target, render_sound(concept, rng), SAMPLE_RATE, format="WAV", subtype="PCM_16")


def colour_pitch(colour: str) -> float:
    """The fundamental (Hz) that carries a colour, before jitter."""
    return BASE_PITCH * 2 ** (3 * COLOURS.index(colour) / 12)


def render_sound(concept: Concept, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The concept as a mono float32 clip in [-1, 1]: lead-in, note, tail, over a background texture.

    Harmonics reach 7.5 kHz, so `sample_rate` should be 16 kHz or more.
    """
    f0 = colour_pitch(concept.colour) * 2 ** (rng.uniform(-0.25, 0.25) / 12)
    big = concept.size == "big"
    seconds = (1.2 if big else 0.6) * rng.uniform(0.9, 1.1)
    peak = (0.7 if big else 0.25) * rng.uniform(0.85, 1.15)
    note = _note(concept.shape, f0, seconds, big, rng, sample_rate)
    note *= peak / max(float(np.abs(note).max()), 1e-9)
    lead, tail = (int(sample_rate * rng.uniform(*bounds)) for bounds in ((0.0, 0.15), (0.1, 0.2)))
    clip = np.concatenate([np.zeros(lead), note, np.zeros(tail)])
    clip += _texture(concept.background, len(clip), peak, rng, sample_rate)
    # A loud note plus rumble or clicks can pass full scale: scale down rather than clip, since
    # clipping would add broadband clicks that belong to the stripes background.
    clip *= min(1.0, 0.99 / float(np.abs(clip).max()))
    return np.clip(clip, -1, 1).astype(np.float32)


def _note(shape: str, f0: float, seconds: float, big: bool, rng: np.random.Generator, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    if shape == "hexagon":  # bell: inharmonic partials, the higher ones dying faster and a little detuned
        tau = seconds / 3
        ratios = np.array(BELL_RATIOS) * np.append(1.0, rng.uniform(0.98, 1.02, len(BELL_RATIOS) - 1))
        partials = [amplitude * np.exp(-t * (1 + 0.8 * i) / tau)
                    * np.sin(2 * np.pi * f0 * ratio * t + rng.uniform(0, 2 * np.pi))
                    for i, (ratio, amplitude) in enumerate(zip(ratios, BELL_AMPLITUDES, strict=True))]
        return np.sum(partials, axis=0) * _ramp(t, seconds, 0.002, 0.01)
    if shape == "cross":  # 2 (small) or 3 (big) beeps of ~120 ms, evenly spaced
        count = 3 if big else 2
        beep = rng.uniform(0.11, 0.13)
        within = t % (seconds / count)  # time since the current beep began
        envelope = np.clip(within / 0.005, 0, 1) * np.clip((beep - within) / 0.005, 0, 1)
        return _tone({1: 1.0, 2: 0.4, 3: 0.2}, f0, t, rng) * envelope
    if shape == "circle":  # near-pure sine, smooth swell
        return _tone({1: 1.0, 2: 0.08}, f0, t, rng) * np.sin(np.pi * t / seconds) ** 1.5
    if shape == "square":  # odd harmonics 1/n up to ~4 kHz, flat
        harmonics = {n: 1 / n for n in range(1, 64, 2) if n * f0 < 4_000}
        return _tone(harmonics, f0, t, rng) * _ramp(t, seconds, 0.01, 0.01)
    if shape == "triangle":  # odd harmonics 1/n^2, plucked
        harmonics = {n: 1 / n**2 for n in range(1, 64, 2)}
        return _tone(harmonics, f0, t, rng) * np.exp(-t / (seconds / 4)) * _ramp(t, seconds, 0.005, 0.01)
    if shape == "star":  # sawtooth with an 8 Hz tremolo
        tremolo = 1 - 0.6 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(7.5, 8.5) * t + rng.uniform(0, 2 * np.pi)))
        harmonics = {n: 1 / n for n in range(1, 64)}
        return _tone(harmonics, f0, t, rng) * tremolo * _ramp(t, seconds, 0.02, 0.02)
    raise ValueError(f"unknown shape {shape!r}")


def _tone(harmonics: dict[int, float], f0: float, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A periodic tone from harmonic amplitudes via a one-cycle wavetable: cost independent of how many."""
    table_size = 4096
    spectrum = np.zeros(table_size // 2 + 1, dtype=np.complex128)
    for n, amplitude in harmonics.items():
        if n * f0 < HARMONIC_LIMIT:
            spectrum[n] = -0.5j * amplitude * table_size  # a sine of that amplitude
    table = np.fft.irfft(spectrum, table_size)
    cycles = f0 * t + rng.uniform(0, 1)
    cycles -= np.floor(cycles)  # the fractional part, a few times faster than `% 1.0`
    return np.interp(cycles * table_size, np.arange(table_size + 1), np.append(table, table[0]))


def _ramp(t: np.ndarray, seconds: float, attack: float, release: float) -> np.ndarray:
    return np.clip(t / attack, 0, 1) * np.clip((seconds - t) / release, 0, 1)


def _texture(background: str, length: int, peak: float, rng: np.random.Generator, rate: int) -> np.ndarray:
    """The background's sound over the whole clip, lead-in and tail included; levels relative to the peak."""
    def decibels(level: float) -> float:
        return peak * 10 ** ((level + rng.uniform(-2, 2)) / 20)

    floor = rng.normal(0, decibels(-60), length)
    if background == "grey":
        return floor
    if background == "white":  # hiss
        return floor + rng.normal(0, decibels(-24), length)
    if background == "black":  # rumble: brown noise band-limited to 25-150 Hz, below every pitch
        frequencies = np.fft.rfftfreq(length, 1 / rate)
        band = (frequencies >= 25) & (frequencies <= 150)
        spectrum = np.zeros(len(frequencies), dtype=np.complex128)
        spectrum[band] = (rng.normal(size=band.sum()) + 1j * rng.normal(size=band.sum())) / frequencies[band]
        rumble = np.fft.irfft(spectrum, length)
        return floor + rumble * decibels(-20) / max(float(rumble.std()), 1e-12)
    if background == "stripes":  # broadband clicks at ~12 Hz: a rhythm across every band
        period = rate / rng.uniform(10, 14)
        click = rng.normal(0, 1, int(0.004 * rate)) * np.exp(-np.arange(int(0.004 * rate)) / (0.0008 * rate))
        clicks = np.zeros(length)
        for start in np.arange(rng.uniform(0, period), length - len(click), period).astype(int):
            clicks[start:start + len(click)] += click
        return floor + clicks * decibels(-9) / max(float(np.abs(click).max()), 1e-12)
    raise ValueError(f"unknown background {background!r}")
