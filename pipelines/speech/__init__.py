"""Speech: audio in, two channels (ASR text and expressive tags), one merged transcript, and its metrics.

    audio.py        load/resample/validate/pad audio (soundfile + soxr)
    tags.py         the 15-tag taxonomy, `[tag]` parsing, the top-k filter
    merge.py        tags into the text (before the nearest word when timed)
    channels.py     token streams -> text with times and per-tag log-probabilities
    voxtral.py      Voxtral Realtime + tag LoRA: whole file and streaming, both channels in one batch
    whisper_asr.py  the CPU profile's ASR channel (Whisper tiny.en via faster-whisper)
    transcribe.py   `Transcript` and the entry point the UI and the CLI share
    session.py      one user's live microphone recording
    metrics.py      tag P/R/F1, hallucination rate, WER
    cli.py          `transcribe`, `tag-metrics`, `eval-tags`
    testing.py      tiny random Voxtral models and tag LoRAs for tests
"""
