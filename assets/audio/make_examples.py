"""Regenerate the Listen tab's example clips with espeak-ng (synthetic voices: no recordings, no licences).

    python assets/audio/make_examples.py        # needs `apt-get install espeak-ng`

Each clip is written as 16 kHz mono FLAC by the same loader the app uses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

# (file name, espeak-ng voice, words per minute, text)
CLIPS = [
    ("question.flac", "en-us", 150, "How many customers placed an order last month?"),
    ("whispered.flac", "en-us+whisper", 140, "Listen, I know you're in a meeting. Which products sold best in March?"),
]


def main() -> int:
    import soundfile as sf

    from pipelines.speech.audio import SAMPLE_RATE, load_audio

    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install espeak-ng", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for name, voice, speed, text in CLIPS:
            wav = Path(tmp) / "clip.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
            sf.write(HERE / name, load_audio(wav).samples, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
