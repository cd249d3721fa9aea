"""Training and evaluation: the loss against a naive reference, tiny real training runs that must
measurably beat random weights, exact resume after an interruption, and the errors a user meets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import run_json, run_xmodal
from tests.helpers.pairs_data import write_pairs

FAST = {"epochs": 20, "batch_size": 32, "lr": 5e-3, "patience": 20}


# ---------------------------------------------------------------- loss and metrics against references

def naive_loss(a: torch.Tensor, b: torch.Tensor, scale: float, concepts: list[int]) -> float:
    """Symmetric InfoNCE written out row by row: each row's target spread over its concept's rows."""
    total = 0.0
    n = len(a)
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [scale * float(x[i] @ y[j]) for j in range(n)]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
            positives = [j for j in range(n) if concepts[j] == concepts[i]]
            total += -sum(logits[j] - log_norm for j in positives) / len(positives) / n
    return total / 2


def test_concept_loss_matches_a_naive_reference_and_open_clip():
    from open_clip.loss import ClipLoss

    from retrieval.training.loss import ConceptClipLoss

    generator = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(12, 16, generator=generator), dim=1)
    b = F.normalize(torch.randn(12, 16, generator=generator), dim=1)
    concepts = [0, 1, 2, 0, 3, 1, 4, 5, 0, 6, 7, 8]  # row 0 shares its concept with rows 3 and 8
    ours = ConceptClipLoss()(a, b, torch.tensor(14.0), torch.tensor(concepts))
    assert float(ours) == pytest.approx(naive_loss(a, b, 14.0, concepts), rel=1e-5)
    # With every concept distinct it is exactly open_clip's loss; with duplicates it is not.
    distinct = ConceptClipLoss()(a, b, torch.tensor(14.0), torch.arange(12))
    assert float(distinct) == pytest.approx(float(ClipLoss()(a, b, torch.tensor(14.0))), rel=1e-6)
    assert abs(float(ours) - float(distinct)) > 1e-3


def test_duplicate_captions_are_not_pushed_apart():
    """Rows 0 and 1 carry the same caption and nearly the same picture. One gradient step of the
    plain CLIP loss drives them apart (it must tell them apart to win); the concept-aware loss does
    not, because for it they are one concept."""
    from open_clip.loss import ClipLoss

    from retrieval.training.loss import ConceptClipLoss

    start = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.0, 1.0]])

    def cosine_after_a_step(loss_fn, *concepts) -> float:
        a = start.clone().requires_grad_()
        targets = F.normalize(start, dim=1)
        loss_fn(F.normalize(a, dim=1), targets, torch.tensor(20.0), *concepts).backward()
        moved = F.normalize(a.detach() - 0.5 * a.grad, dim=1)
        return float(moved[0] @ moved[1])

    before = float(F.normalize(start, dim=1)[0] @ F.normalize(start, dim=1)[1])
    assert cosine_after_a_step(ClipLoss()) < before - 1e-3
    assert cosine_after_a_step(ConceptClipLoss(), torch.tensor([0, 0, 1])) >= before - 1e-6


def test_concept_ranks_match_a_naive_reference():
    from retrieval.training.metrics import concept_ranks, summarise

    rng = np.random.default_rng(0)
    queries = rng.normal(size=(40, 8)).astype(np.float32)
    gallery = rng.normal(size=(60, 8)).astype(np.float32)
    q_concepts, g_concepts = rng.integers(0, 7, 40), rng.integers(0, 6, 60)  # concept 6: never in the gallery
    ranks = concept_ranks(queries, gallery, q_concepts, g_concepts, chunk=7)
    for i in range(40):
        order = np.argsort(-(gallery @ queries[i]), kind="stable")
        hits = [r for r, j in enumerate(order, 1) if g_concepts[j] == q_concepts[i]]
        assert ranks[i] == (hits[0] if hits else 0)
    summary = summarise(ranks)
    assert summary["queries"] == int((ranks > 0).sum())
    assert summary["R@1"] <= summary["R@5"] <= summary["R@10"]


# ---------------------------------------------------------------- tiny real training runs

@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"), {"train": 40, "val": 3, "test": 5}, image_size=48)


@pytest.fixture(scope="module")
def trained_clip(pairs, tmp_path_factory):
    from retrieval.training.clip import train_clip
    from retrieval.training.loop import TrainOptions

    out = tmp_path_factory.mktemp("trained") / "clip"
    result, _ = train_clip(pairs, out, TrainOptions(**FAST), architecture="micro")
    return out, result


def test_clip_training_beats_random_weights(pairs, trained_clip, micro_model):
    from retrieval.training.evaluate import evaluate

    out, result = trained_clip
    before = evaluate(str(micro_model), pairs, "test").directions
    after = evaluate(str(out), pairs, "test").directions
    # 8 concepts: chance is about 1/8. Trained, text finds the right images and back.
    assert before["text→image"]["R@1"] < 0.5
    assert after["text→image"]["R@1"] >= 0.8
    assert after["image→text"]["R@1"] >= 0.8
    assert after["text→image"]["median_rank"] == 1
    history = json.loads((out / "training.json").read_text())
    assert len(history["history"]) == result.epochs_run and result.best_score == history["best_score"]
    assert not (out / "checkpoint").exists()  # a finished run leaves a clean model directory


def test_trained_model_is_a_model_spec_for_indexing_and_search(trained_clip, pairs, tmp_path):
    out, _ = trained_clip
    images = pairs.parent / "images"
    run_xmodal("index", str(images), "--db", str(tmp_path / "db"), "--model", str(out), check=True)
    found = run_json("search", "a big red circle on grey", "--db", str(tmp_path / "db"), "-k", "5")
    concepts = {json.loads(line)["image"].split("/")[-1]: json.loads(line)["concept"]
                for line in pairs.read_text().splitlines()}
    shown = [concepts[hit["path"].split("/")[-1]] for hit in found["results"]]
    assert shown[0] == "big red circle on grey" and shown.count("big red circle on grey") >= 3, shown


def test_audio_training_brings_sound_into_the_frozen_space(pairs, trained_clip, tmp_path):
    from retrieval.encoders import create_encoder
    from retrieval.training.audio import train_audio
    from retrieval.training.evaluate import evaluate
    from retrieval.training.loop import TrainOptions

    base, _ = trained_clip
    out = tmp_path / "audio"
    train_audio(pairs, str(base), out, TrainOptions(**FAST), channels=(8, 16, 32))
    before = evaluate(str(base), pairs, "test").directions
    after = evaluate(str(out), pairs, "test").directions
    assert after["audio→image"]["R@1"] >= 0.7 > before["audio→image"]["R@1"]
    assert after["audio→text"]["R@1"] >= 0.7
    # The frozen towers are untouched: image and text vectors are the base model's, bit for bit.
    old, new = create_encoder(str(base), device="cpu"), create_encoder(str(out), device="cpu")
    assert np.array_equal(old.encode_text(["a red circle"]), new.encode_text(["a red circle"]))
    assert after["text→image"] == before["text→image"]


def test_an_interrupted_run_resumes_to_the_same_weights(pairs, tmp_path):
    from safetensors.torch import load_file

    from retrieval.errors import TrainingInterrupted
    from retrieval.training.clip import train_clip
    from retrieval.training.loop import TrainOptions

    options = TrainOptions(**{**FAST, "epochs": 4, "augment": True})
    train_clip(pairs, tmp_path / "straight", options, architecture="micro")

    def interrupt(event):
        if event.kind == "step" and event.step == 7:  # mid-epoch (4 steps per epoch)
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train_clip(pairs, tmp_path / "resumed", options, architecture="micro", on_event=interrupt)
    assert (tmp_path / "resumed" / "checkpoint" / "state.json").is_file()
    with pytest.raises(Exception, match="--resume"):  # without --resume the folder is not overwritten
        train_clip(pairs, tmp_path / "resumed", options, architecture="micro")
    train_clip(pairs, tmp_path / "resumed", options, architecture="micro", resume=True)

    straight = load_file(str(tmp_path / "straight" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.allclose(straight[key].float(), resumed[key].float(), atol=1e-6), key
    history = [json.loads((tmp_path / d / "training.json").read_text())["history"] for d in ("straight", "resumed")]
    assert [h["score"] for h in history[0]] == [h["score"] for h in history[1]]


def test_a_checkpoint_of_other_options_is_refused(pairs, tmp_path):
    from retrieval.errors import TrainingInterrupted, TrainingStateError
    from retrieval.training.clip import train_clip
    from retrieval.training.loop import TrainOptions

    def interrupt(event):
        if event.kind == "step" and event.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_clip(pairs, tmp_path / "m", TrainOptions(**FAST), architecture="micro", on_event=interrupt)
    with pytest.raises(TrainingStateError, match="different run"):
        train_clip(pairs, tmp_path / "m", TrainOptions(**{**FAST, "lr": 1e-4}), architecture="micro", resume=True)


# ---------------------------------------------------------------- what a user sees on the command line

def test_cli_training_reports_progress_skips_bad_media_and_evaluates(pairs, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pairs.parent, data)
    (data / "images" / "train-0-0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # truncated PNG
    out = tmp_path / "model"
    result = run_xmodal("train", "clip", "--pairs", str(data / "pairs.jsonl"), "--out", str(out), "--arch", "micro",
                        "--epochs", "2", "--batch-size", "32", check=True)
    assert "epoch   2: validation" in result.stderr
    assert "skipped pair train-0-0" in result.stderr and "model in" in result.stdout
    report = run_json("eval", "--model", str(out), "--pairs", str(data / "pairs.jsonl"), "--split", "test")
    assert set(report["directions"]) == {"text→image", "image→text", "audio→image", "audio→text", "text→audio"}
    assert report["directions"]["text→image"]["gallery"] == 40
    assert report["warnings"] and "text→image 40" in report["warnings"][0]


def test_cli_names_the_bad_line_of_a_pairs_file(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.png", "captions": ["x"]}\n{"image": "b.png", "captions": []}\n')
    result = run_xmodal("train", "clip", "--pairs", str(pairs), "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "pairs.jsonl:2" in result.stderr and "Traceback" not in result.stderr
    result = run_xmodal("eval", "--model", "starter", "--pairs", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "no pairs file" in result.stderr


# ---------------------------------------------------------------- compact vocabulary and float16 storage

def test_compact_vocabulary_keeps_the_corpus_words_and_pools_at_end_of_text():
    from retrieval.encoders.vocab import UNK, CompactTokenizer, build_vocab

    kept = build_vocab(["a big red circle", "small blue square"], context_length=16)
    tokenizer = CompactTokenizer(kept, 16)
    known, unknown = tokenizer(["big red square", "purple giraffe"])
    assert UNK not in known.tolist()
    assert (unknown == UNK).sum() >= 2  # neither word was in the corpus
    for row in (known, unknown):
        assert int(row.argmax()) == int((row > 0).sum()) - 1  # open_clip pools at the largest id: end of text
    assert int(known.max()) == tokenizer.vocab_size - 1


def test_float16_weights_load_and_agree(trained_clip, tmp_path):
    from retrieval.encoders import create_encoder
    from retrieval.encoders.weights import save_model_dir

    out, _ = trained_clip
    full = create_encoder(str(out), device="cpu")
    save_model_dir(tmp_path / "half", full.config, {"clip": full.clip_model, "audio": full.audio_tower},
                   dtype=torch.float16)
    half = create_encoder(str(tmp_path / "half"), device="cpu")
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size
    texts = ["a big red circle on grey", "small green cross"]
    assert (np.sum(full.encode_text(texts) * half.encode_text(texts), axis=1) > 0.999).all()


def test_train_starter_refuses_an_out_folder_it_would_destroy(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("years of work")
    result = run_xmodal("train", "starter", "--out", str(tmp_path / "mine"), "--work", str(tmp_path / "work"))
    assert result.returncode == 2 and "not an earlier starter model" in result.stderr
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "years of work"
    assert not (tmp_path / "work").exists()  # refused before any work started
