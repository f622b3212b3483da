"""WeChat voice → a playable WAV kept beside the original.

WeChat's SILK files start with one ``0x02`` byte before ``#!SILK_V3`` (case W5), which
generic decoders reject; ``silk-python`` (``pysilk``) decodes them as they are, and the
output is 16-bit mono PCM at 24 kHz wrapped in a WAV header by the standard library. AMR
voice (``#!AMR``, older Android builds) is kept as it is: browsers and review tools play it.
"""

from __future__ import annotations

import io
import wave

SILK_MAGIC = b"#!SILK_V3"
SAMPLE_RATE = 24000


class VoiceError(ValueError):
    pass


def is_silk(data: bytes) -> bool:
    return data.startswith(SILK_MAGIC) or data[1:].startswith(SILK_MAGIC)


def silk_to_wav(data: bytes) -> bytes:
    if not is_silk(data):
        raise VoiceError("not SILK audio (no #!SILK_V3 header)")
    import pysilk

    pcm = io.BytesIO()
    try:
        pysilk.decode(io.BytesIO(data), pcm, SAMPLE_RATE)
    except Exception as e:  # pysilk raises its own SilkError and ValueErrors on damaged frames
        raise VoiceError(f"SILK decoding failed ({e.__class__.__name__})") from None
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.getvalue())
    return out.getvalue()
