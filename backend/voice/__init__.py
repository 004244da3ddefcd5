"""Voice: the streamer's speech in (commands), the idol's speech out (with the mouth in sync).

In:  :mod:`.sources` (microphone / PCM / wav -> 16 kHz blocks) -> :mod:`.segmenter` with :mod:`.vad`
(Silero) -> :mod:`.asr` (faster-whisper) -> :mod:`.wake` (wake phrase, push-to-talk) -> the director;
:mod:`.listener` runs that pipeline.
Out: :mod:`.tts` (piper / coqui / espeak-ng, blocked words, :mod:`.resample` to the stream rate) -> the engine,
which drives the mouth from :mod:`.lipsync`.  :mod:`.models` finds the offline models; :mod:`.errors` holds
the exceptions.  Heavy packages are imported lazily: importing this package costs nothing.
"""
