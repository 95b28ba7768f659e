"""`python -m pipelines bench-listen`: the live microphone path at real-time pace, one user and several.

A clip is cut into the chunks a browser sends (48 kHz int16, every `--chunk-s`) and pushed at the pace it was
spoken through the very `ListenSession` the Listen tab uses: `receive` and `status` are what the tab's stream
handler calls, so their time is the handler's own. It reports that time (p50/p95), when the first right words
appeared after speech began, how far recognition trailed the audio, how long the final transcript took after
stop, and the final WER next to a whole-file transcription of the same clip; then the same with `--sessions`
users at once, each speaking another clip. Results go to a JSON file (default results/bench-listen.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.profiles import ASSETS_DIR
from pipelines.speech.audio import SAMPLE_RATE, load_audio
from pipelines.speech.live import LiveScheduler, recognition_nice
from pipelines.speech.metrics import normalize_words, wer
from pipelines.speech.session import ListenSession, percentile

SPOKEN_DIR = ASSETS_DIR / "audio" / "spoken"
MIC_RATE = 48_000
FIRST_WORDS = 2  # "the first right words": the reference's first two words, in order, at the start


def spoken_clips() -> list[dict]:
    """The committed test clips: file, text, speech_start_s (assets/audio/spoken/clips.json)."""
    return json.loads((SPOKEN_DIR / "clips.json").read_text())


def first_words_right(reference: str, text: str, n: int = FIRST_WORDS) -> bool:
    want, got = normalize_words(reference)[:n], normalize_words(text)[:n]
    return len(got) == len(want) and got == want


def mic_chunks(samples: np.ndarray, chunk_s: float) -> list[np.ndarray]:
    import soxr

    mic = (np.clip(soxr.resample(samples, SAMPLE_RATE, MIC_RATE), -1, 1) * 32767).astype(np.int16)
    step = int(chunk_s * MIC_RATE)
    return [mic[i:i + step] for i in range(0, len(mic), step)]


def stream_clip(engine, clip: dict, *, chunk_s: float, scheduler: LiveScheduler) -> dict:
    """One user speaking `clip` in real time, then pressing stop; what they would have seen, measured."""
    audio = load_audio(SPOKEN_DIR / clip["file"])
    chunks = mic_chunks(audio.samples, chunk_s)
    session = ListenSession(engine, tags=False, scheduler=scheduler)
    session.prepare()
    lags, behind, first_words_at = [], 0, None
    started = time.perf_counter()
    for n, chunk in enumerate(chunks):
        time.sleep(max(0.0, started + (n + 1) * chunk_s - time.perf_counter()))  # a chunk once it is recorded
        handler_started = time.perf_counter()
        session.receive(MIC_RATE, chunk)
        status = session.status()
        session.record_handler_ms((time.perf_counter() - handler_started) * 1000)
        lags.append(status.lag_s)
        behind += status.behind
    # Between chunks the UI shows what the worker published; poll it finely until stop, for the first words.
    stop_at = time.perf_counter()
    session.stop()
    final = session.result(timeout=600)
    finish_s = time.perf_counter() - stop_at
    first_words_at = _first_right_words_time(session, clip["text"])
    speech_start = started + float(clip.get("speech_start_s", 0.0))
    return {
        "clip": clip["file"], "audio_s": round(audio.seconds, 3), "chunks": len(chunks),
        "received_s": final.timings["received_s"], "recognised_audio_s": final.timings["audio_s"],
        "handler_ms": session.handler_stats(),
        "first_right_words_s": None if first_words_at is None else round(first_words_at - speech_start, 3),
        "lag_s": {"mean": round(float(np.mean(lags)), 3), "max": round(float(np.max(lags)), 3)},
        "behind_chunks": int(behind), "finish_after_stop_s": round(finish_s, 3),
        "decodes": getattr(session._stream, "decodes", None),
        "decode_log": getattr(session._stream, "decode_log", None),  # (window s, ms) per decode
        "wer": round(wer(clip["text"], final.text), 4), "text": final.text,
    }


def _first_right_words_time(session: ListenSession, reference: str) -> float | None:
    for at, text in session.published:
        if first_words_right(reference, text):
            return at
    return None


def whole_file(engine, clip: dict) -> dict:
    from pipelines.speech.transcribe import transcribe_audio

    audio = load_audio(SPOKEN_DIR / clip["file"])
    started = time.perf_counter()
    result = transcribe_audio(audio, engine, tags=False)
    return {"clip": clip["file"], "seconds": round(time.perf_counter() - started, 3),
            "wer": round(wer(clip["text"], result.text), 4), "text": result.text}


def run_bench(engine, clips: list[dict], *, sessions: int, chunk_s: float) -> dict:
    main_clip = clips[0]
    whole = whole_file(engine, main_clip)
    single = stream_clip(engine, main_clip, chunk_s=chunk_s, scheduler=LiveScheduler())
    shared = LiveScheduler()  # one worker for all, as in the app
    multi: list[dict | None] = [None] * sessions

    def user(index: int) -> None:
        multi[index] = stream_clip(engine, clips[index % len(clips)], chunk_s=chunk_s, scheduler=shared)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler_all = [ms for m in multi for ms in [m["handler_ms"]["p95_ms"]]]
    return {
        "whole_file": whole,
        "single": single,
        "sessions": {
            "n": sessions, "runs": multi,
            "all_received": all(abs(m["received_s"] - m["audio_s"]) < 1e-2 for m in multi),
            "max_wer": max(m["wer"] for m in multi),
            "max_lag_s": max(m["lag_s"]["max"] for m in multi),
            "max_finish_after_stop_s": max(m["finish_after_stop_s"] for m in multi),
            "handler_p95_ms_max": round(max(handler_all), 3),
        },
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("faster-whisper", "ctranslate2", "onnxruntime", "numpy", "soxr", "torch", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def cmd_bench_listen(args: argparse.Namespace) -> int:
    from pipelines.speech.cli import _profile
    from pipelines.speech.transcribe import get_speech_engine

    clips = spoken_clips()
    if args.clip:
        path = Path(args.clip)
        if not args.text:
            raise BadInput("--clip needs --text (what is said in it)")
        clips = [{"file": str(path.resolve()), "text": args.text, "speech_start_s": args.speech_start_s}] + clips
    engine = get_speech_engine(_profile(args))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = run_bench(engine, clips, sessions=args.sessions, chunk_s=args.chunk_s)
    report = {
        "command": "python -m pipelines " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py")
        else "python -m pipelines bench-listen",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "asr_model": engine.asr_model, "device": engine.device, "chunk_s": args.chunk_s,
        "recognition_nice": recognition_nice(),
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": load, "platform": platform.platform()},
        "versions": _versions(),
        **results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    single, multi = report["single"], report["sessions"]
    print(json.dumps({
        "handler_p50_ms": single["handler_ms"]["p50_ms"], "handler_p95_ms": single["handler_ms"]["p95_ms"],
        "first_right_words_s": single["first_right_words_s"], "max_lag_s": single["lag_s"]["max"],
        "final_wer": single["wer"], "whole_file_wer": report["whole_file"]["wer"],
        f"{multi['n']}_sessions_max_wer": multi["max_wer"], f"{multi['n']}_sessions_max_lag_s": multi["max_lag_s"],
        "all_audio_received": multi["all_received"], "out": str(out),
    }))
    return 0


def register(subparsers) -> None:
    from pipelines.speech.cli import add_speech_arguments

    bench = subparsers.add_parser("bench-listen", help="the live microphone path at real-time pace (JSON)")
    bench.add_argument("--sessions", type=int, default=4, help="users speaking at once in the second run")
    bench.add_argument("--chunk-s", type=float, default=0.5, help="seconds per microphone chunk (Gradio's stream_every)")
    bench.add_argument("--clip", help="another clip to lead with (default: the spoken test clips)")
    bench.add_argument("--text", help="what is said in --clip")
    bench.add_argument("--speech-start-s", type=float, default=0.0, help="where speech begins in --clip")
    bench.add_argument("--out", default="results/bench-listen.json", help="JSON report")
    add_speech_arguments(bench)
    bench.set_defaults(func=cmd_bench_listen)
