"""`xmodal bench audio`: how fast sound becomes vectors, in the two stages indexing runs.

  features   the log-mel front end (what each decode worker computes), one thread, as seconds of
             audio per second of wall time: "× real time per core"
  tower      the audio tower on those features, clips/s at each batch size (windows of all
             clips of a batch go through the tower together, as in indexing)

The clips are sounds of the synthetic world, tiled to `--seconds` each; each figure is the
median of `repeats` timed passes after a warm-up pass.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bench.machine import cpu_name, versions

BATCHES = (1, 16, 64)


@dataclass
class AudioBenchReport:
    model: str
    clips: int
    clip_seconds: float
    sample_rate: int
    machine: str
    cpu_count: int
    torch_threads: int
    versions: dict[str, str]
    repeats: int
    feature_realtime: list[float] = field(default_factory=list)  # × real time, one thread, per repeat
    tower_clips_per_second: dict[int, list[float]] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{self.model}: {self.clips} clips of {self.clip_seconds:g} s at {self.sample_rate} Hz; "
                 f"{self.machine}, {self.cpu_count} cores, {self.torch_threads} torch threads; "
                 f"medians of {self.repeats}",
                 f"{'stage':<28} {'rate':>14}",
                 f"{'log-mel features, 1 thread':<28} {statistics.median(self.feature_realtime):>12.0f}× real time"]
        for batch, rates in self.tower_clips_per_second.items():
            lines.append(f"{f'audio tower, batch {batch}':<28} {statistics.median(rates):>9.1f} clips/s")
        return "\n".join(lines)

    def to_json(self) -> str:
        body = asdict(self)
        body["feature_realtime_median"] = statistics.median(self.feature_realtime)
        body["tower_clips_per_second_median"] = {str(b): statistics.median(r)
                                                 for b, r in self.tower_clips_per_second.items()}
        return json.dumps(body, indent=2) + "\n"


def run_audio_benchmark(model: str = "small", clips: int = 64, clip_seconds: float = 5.0,
                        repeats: int = 5) -> AudioBenchReport:
    """Front-end speed per core and tower throughput for `model` (a spec or a preset name)."""
    import librosa
    import torch

    from retrieval.bench.index_bench import resolve_model
    from retrieval.data import world
    from retrieval.encoders import create_encoder
    from retrieval.encoders.frontend import compute_log_mel, mel_filterbank

    with tempfile.TemporaryDirectory() as work:
        encoder = create_encoder(resolve_model(model, Path(work)), device="cpu")
    front_end = encoder.config.audio.front_end
    rng = np.random.default_rng(0)
    concepts = world.all_concepts()
    samples = int(clip_seconds * front_end.sample_rate)
    waves = []
    for number in range(clips):
        sound = world.render_sound(concepts[number % len(concepts)], rng, front_end.sample_rate)
        waves.append(np.resize(sound, samples).astype(np.float32))  # tiled to the clip length
    report = AudioBenchReport(model, clips, clip_seconds, front_end.sample_rate, cpu_name(), os.cpu_count() or 1,
                              torch.get_num_threads(), versions(librosa, torch), repeats)
    from threadpoolctl import threadpool_limits  # installed with librosa (through scikit-learn)

    filterbank = mel_filterbank(front_end)
    with threadpool_limits(1):  # one core, as in a decode worker: BLAS would otherwise take both
        compute_log_mel(waves[0], front_end, filterbank)  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            mels = [compute_log_mel(wave, front_end, filterbank) for wave in waves]
            report.feature_realtime.append(clips * clip_seconds / (time.perf_counter() - started))
    durations = [clip_seconds] * clips
    for batch in BATCHES:
        encoder.batch_size = max(encoder.batch_size, batch * 8)  # windows of `batch` clips in one forward pass
        encoder.embed_log_mels(mels[:batch], durations[:batch])  # warm-up
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, clips, batch):
                encoder.embed_log_mels(mels[start : start + batch], durations[start : start + batch])
            rates.append(clips / (time.perf_counter() - started))
        report.tower_clips_per_second[batch] = rates
    return report
