"""Spoken questions: the corpus command, projector training on the embedded models, and `sql --audio` both ways."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from pipelines.__main__ import main
from pipelines.errors import BadInput
from tests.conftest import SPIDER_DIR

needs_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                 reason="espeak-ng and sox are not installed")
needs_spider = pytest.mark.skipif(not (SPIDER_DIR / "train_spider.json").is_file(), reason="Spider is not here")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipelines.speech.spoken_questions import generate

    out = tmp_path_factory.mktemp("spoken")
    generate(out, SPIDER_DIR, seed=3, counts={"train": 4, "dev": 1, "test": 2}, use_piper=False)
    return out


@needs_tools
@needs_spider
def test_corpus_says_spider_and_demo_questions_with_held_out_voices(corpus):
    from pipelines.speech.spoken_questions import load_spoken_questions
    from pipelines.speech.tag_data import VOICES
    from pipelines.sql.examples import load_examples

    import soundfile as sf

    splits = {split: load_spoken_questions(corpus / f"{split}.jsonl") for split in ("train", "dev", "test", "demo")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [4, 1, 2]
    demo_questions = {e.question for items in load_examples().values() for e in items}
    assert {row["question"] for row in splits["demo"]} == demo_questions
    assert len(splits["demo"]) == len(demo_questions) * len(VOICES["test"])  # every question, every test voice
    train_voices = {row["voice"] for row in splits["train"]}
    held_out = {row["voice"] for s in ("test", "demo") for row in splits[s]}
    assert held_out <= {v.name for v in VOICES["test"]} and not train_voices & held_out
    for row in splits["train"] + splits["demo"][:3]:
        audio, rate = sf.read(row["audio"])
        assert rate == 16000 and abs(len(audio) / rate - row["duration_s"]) < 0.01 and np.abs(audio).max() > 0.01
    assert splits["train"][0]["gold_dialect"] == "sqlite" and splits["demo"][0]["gold_dialect"] == "duckdb"


@needs_tools
@needs_spider
def test_train_projector_distils_and_writes_an_ultravox_the_engine_answers_with(corpus, tmp_path):
    from pipelines.engine import SamplingParams
    from pipelines.engine.ultravox_engine import UltravoxEngine
    from pipelines.profiles import CPU_SQL_ADAPTER_DIR
    from pipelines.speech.audio import load_audio
    from pipelines.speech.ultravox import read_projector
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.demo_data import ensure_demo_databases
    from pipelines.sql.spoken import ask_end_to_end
    from pipelines.training.projector_train import ProjectorTrainConfig, train_projector

    events = []
    config = ProjectorTrainConfig(data=str(corpus / "train.jsonl"), output_dir=str(tmp_path / "uv"), ctc_steps=2,
                                  kd_steps=2, batch_size=2, warmup_steps=1, save_steps=1)
    record = train_projector(config, events.append)
    assert record["status"] == "completed" and [h["phase"] for h in record["history"]] == ["ctc"] * 2 + ["kd"] * 2
    assert all(np.isfinite(h["loss"]) and h["loss"] >= 0 for h in record["history"])
    assert any(e.stage == "train" and "KD step" in e.message for e in events)
    assert set(read_projector(tmp_path / "uv")) == {"ln_pre.weight", "linear_1.weight", "linear_2.weight",
                                                   "ln_post.weight"}

    engine = UltravoxEngine(str(tmp_path / "uv"), str(CPU_SQL_ADAPTER_DIR))
    demos = ensure_demo_databases()
    row = json.loads((corpus / "demo.jsonl").read_text().splitlines()[0])
    database = DuckDBDatabase(demos[row["db_id"]].path, name=row["db_id"])
    answer = ask_end_to_end(load_audio(corpus / row["audio"]), database, engine, max_retries=0,
                            params=SamplingParams(max_new_tokens=24))
    assert answer.spoken["voice"] == "end-to-end" and answer.question.startswith("(spoken")
    assert len(answer.attempts) == 1 and answer.attempts[0].reply  # it generated, and the reply was checked


@needs_tools
@needs_spider
def test_ctc_scores_rows_against_the_questions_tokens_and_reads_them_back(corpus, tmp_path):
    import torch

    from pipelines.speech.ultravox import UltravoxConfig
    from pipelines.training.projector_train import Distiller, ProjectorTrainConfig, load_examples

    config = ProjectorTrainConfig(data=str(corpus / "train.jsonl"), output_dir=str(tmp_path / "uv"))
    examples, schema_texts, _ = load_examples(config)
    (tmp_path / "uv").mkdir()
    UltravoxConfig(audio_model_id=config.audio_model, text_model_id=config.text_model,
                   hidden_size=config.hidden_size).write(tmp_path / "uv")
    distiller = Distiller(config, tmp_path / "uv", schema_texts, [example.question for example in examples])
    vocabulary = distiller.ctc_vocabulary
    question = examples[0].question
    assert vocabulary[0] == 0 and len(vocabulary) < 200  # the blank, then only what the questions say
    assert vocabulary[distiller.ctc_targets(question)].tolist() == distiller.ids(" " + question).tolist()
    assert distiller.ctc_logits(torch.zeros(3, distiller.embed.weight.shape[1])).shape == (3, len(vocabulary))
    # read back: each row's best token, repeats merged, blanks dropped (greedy CTC)
    said = distiller.ctc_targets(question)[:2].tolist()
    best = [0, said[0], said[0], 0, said[1], 0]
    distiller.ctc_logits = lambda rows: torch.nn.functional.one_hot(torch.tensor(best), len(vocabulary)).float()
    assert distiller.read_back(examples[0].audio) == distiller.tokenizer.decode(vocabulary[said].tolist()).strip()


@needs_tools
@needs_spider
def test_a_cancelled_projector_run_resumes_from_its_folder_alone(corpus, tmp_path, capsys):
    import threading

    from pipelines.speech.ultravox import read_projector
    from pipelines.training.projector_train import ProjectorTrainConfig, train_projector

    cancel = threading.Event()
    config = ProjectorTrainConfig(data=str(corpus / "train.jsonl"), output_dir=str(tmp_path / "uv"), ctc_steps=1,
                                  kd_steps=2, batch_size=2, warmup_steps=1, save_steps=10)
    first = train_projector(config, lambda event: event.step >= 1 and cancel.set(), cancel)
    assert first["status"] == "cancelled" and first["steps"] == 1
    assert set(read_projector(tmp_path / "uv")) >= {"linear_1.weight"}  # the projector so far, usable as it is
    assert main(["train-projector", "--output-dir", str(tmp_path / "uv"), "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["steps"] == summary["max_steps"] == 3
    record = json.loads((tmp_path / "uv" / "training.json").read_text())
    assert [h["phase"] for h in record["history"]] == ["ctc", "kd", "kd"]


def _wav(path, seconds=1.5):
    import soundfile as sf

    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path

@needs_tools
@needs_spider
def test_a_run_can_continue_the_shipped_projector(corpus, tmp_path, capsys):
    import torch

    from pipelines.profiles import CPU_ULTRAVOX_DIR
    from pipelines.speech.ultravox import read_projector

    # a learning rate of 0 leaves the weights where they started: the shipped ones, not a new random projector
    assert main(["train-projector", "--data", str(corpus / "train.jsonl"), "--output-dir", str(tmp_path / "uv"),
                 "--init-projector", str(CPU_ULTRAVOX_DIR), "--ctc-steps", "0", "--kd-steps", "1",
                 "--batch-size", "2", "--learning-rate", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    shipped, continued = read_projector(CPU_ULTRAVOX_DIR), read_projector(tmp_path / "uv")
    assert shipped.keys() == continued.keys()
    assert all(torch.equal(shipped[key].float(), continued[key].float()) for key in shipped)



def test_sql_audio_end_to_end_through_the_speech_in_model(tiny_ultravox, tiny_llama_dir, shop_db, tmp_path,
                                                          monkeypatch, capsys):
    monkeypatch.setenv("VOXQL_SPEECH_SQL_MODEL", str(tiny_ultravox))
    code = main(["sql", "--db", str(shop_db), "--audio", str(_wav(tmp_path / "q.wav")), "--voice", "end-to-end",
                 "--model", str(tiny_llama_dir), "--adapter", "none", "--max-retries", "0"])
    answer = json.loads(capsys.readouterr().out)
    assert code == (0 if answer["executed"] else 1)
    assert answer["spoken"] == {"voice": "end-to-end", "transcript": None, "audio_s": 1.5, "transcription_ms": None}
    assert answer["model"].startswith("Ultravox") and answer["question"] == "(spoken, 1.5 s)"
    assert len(answer["attempts"]) == 1


def test_a_text_only_model_refuses_a_spoken_question(tiny_llama_dir, shop_db):
    from pipelines.engine import get_engine
    from pipelines.sql.databases import DuckDBDatabase
    from pipelines.sql.pipeline import ask

    with pytest.raises(BadInput, match="takes text only"):
        ask("(spoken)", DuckDBDatabase(shop_db), get_engine(str(tiny_llama_dir)), audio=np.zeros(16000, np.float32))


def test_no_speech_in_model_says_how_to_get_one():
    from pipelines.errors import ModelNotAvailable
    from pipelines.profiles import resolve_profile
    from pipelines.sql.spoken import speech_sql_engine

    with pytest.raises(ModelNotAvailable, match="train-projector"):
        speech_sql_engine(dataclasses.replace(resolve_profile("cpu"), speech_sql_model=None))


@needs_tools
def test_sql_audio_cascade_transcribes_then_asks(tiny_llama_dir, shop_db, tmp_path, capsys):
    import subprocess

    wav = tmp_path / "spoken.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), "How many customers are there?"],
                   check=True)
    main(["sql", "--db", str(shop_db), "--audio", str(wav), "--voice", "cascade", "--profile", "cpu",
          "--model", str(tiny_llama_dir), "--adapter", "none", "--max-retries", "0"])
    answer = json.loads(capsys.readouterr().out)
    assert answer["spoken"]["voice"] == "cascade" and "customers" in answer["spoken"]["transcript"].lower()
    assert answer["question"] == answer["spoken"]["transcript"]


@needs_tools
@needs_spider
def test_the_scorer_marks_right_and_wrong_on_demo_and_spider_rows(corpus):
    from pipelines.speech.spoken_questions import load_spoken_questions
    from pipelines.sql.pipeline import run_sql
    from pipelines.sql.spoken import SpokenScorer

    scorer = SpokenScorer(str(SPIDER_DIR))
    spider_row = load_spoken_questions(corpus / "test.jsonl")[0]
    demo_row = load_spoken_questions(corpus / "demo.jsonl")[0]
    assert spider_row["gold_dialect"] == "sqlite" and demo_row["gold_dialect"] == "duckdb"
    for row in (spider_row, demo_row):
        database = scorer.database(row)
        assert scorer.is_right(row, run_sql(row["gold"], database)), row  # the gold itself, run as the app does
        assert not scorer.is_right(row, run_sql("SELECT 1 AS x WHERE 1 = 0", database))


@needs_tools
@needs_spider
def test_eval_spoken_on_spider_rows_asks_three_ways_and_writes_its_report(corpus, tiny_ultravox, tiny_llama_dir,
                                                                          tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VOXQL_SQL_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("VOXQL_SQL_ADAPTER", "none")
    out = tmp_path / "report.json"
    assert main(["eval-spoken", "--data", str(corpus / "test.jsonl"), "--speech-model", str(tiny_ultravox),
                 "--spider-dir", str(SPIDER_DIR), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [summary[way]["total"] for way in ("typed", "cascade", "end-to-end")] == [2, 2, 2]
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m pipelines eval-spoken") and len(report["records"]) == 2
    assert all(record["cascade"]["transcript"] for record in report["records"])  # the ASR heard words

    assert main(["eval-spoken", "--data", str(corpus / "test.jsonl"), "--speech-model", str(tiny_ultravox),
                 "--spider-dir", str(SPIDER_DIR), "--out", str(out), "--ways", "end-to-end"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"end-to-end", "out"} and summary["end-to-end"]["total"] == 2
    assert set(json.loads(out.read_text())["records"][0]) == {"db", "question", "voice", "audio_s", "end-to-end"}
    assert main(["eval-spoken", "--data", str(corpus / "test.jsonl"), "--ways", "end2end"]) == 2
