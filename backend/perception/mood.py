"""The room's mood: sentiment of recent chat and of the streamer's speech -> a slow-moving emotion.

:class:`Sentiment` scores one text in [-1, 1] offline: English with VADER (``vaderSentiment``, a lexicon and
rules tuned to social media, MIT), Chinese with SnowNLP's bundled sentiment model (``snownlp``, MIT; a naive
Bayes model trained on product reviews, read as ``2 * p(positive) - 1``). Text with CJK characters goes to
SnowNLP, the rest to VADER. Both ship their data inside the package: nothing is downloaded.

:class:`MoodTracker` (pure, time passed in) folds the scores into an exponential moving average and turns it
into an emotion with hysteresis: above ``enter`` -> happy, below ``-enter`` -> sad, back inside ``+-exit`` ->
neutral, and at most one change per ``hold_s``. Neutral texts (score 0) pull the mood back to neutral
only gently: they count with half weight.

    mood = MoodTracker(alpha=0.2, enter=0.3, exit=0.1, hold_s=15)
    change = mood.observe(sentiment.score("so cute, love it!"), now)   # "happy", or None if no change
"""

from __future__ import annotations

import math
from typing import Any

from backend.director.grammar import is_cjk
from backend.errors import LiveIdolError

__all__ = ["MoodTracker", "Sentiment", "SentimentUnavailable"]


class SentimentUnavailable(LiveIdolError, RuntimeError):
    """The sentiment packages are missing: the message names what to install."""


class Sentiment:
    """Scores a text's sentiment in [-1, 1] (English: VADER compound; Chinese: SnowNLP)."""

    def __init__(self) -> None:
        try:
            from snownlp import SnowNLP
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise SentimentUnavailable(
                f"the mood needs the 'perception' extra: pip install -e '.[perception]' ({exc})") from exc
        self._vader = SentimentIntensityAnalyzer()
        self._snow: Any = SnowNLP
        _ = self._snow("好").sentiments  # load the model now, not on the first danmaku

    def score(self, text: str) -> float:
        text = text.strip()
        if not text:
            return 0.0
        if sum(1 for ch in text if is_cjk(ch)) >= max(1, len(text) // 4):
            return round(2.0 * float(self._snow(text).sentiments) - 1.0, 4)
        return round(float(self._vader.polarity_scores(text)["compound"]), 4)


class MoodTracker:
    def __init__(self, *, alpha: float = 0.2, enter: float = 0.3, exit: float = 0.1, hold_s: float = 15.0) -> None:
        if not 0 <= exit <= enter:
            raise ValueError(f"mood thresholds: need 0 <= exit ({exit}) <= enter ({enter})")
        self.alpha, self.enter, self.exit, self.hold_s = alpha, enter, exit, hold_s
        self.value = 0.0
        self.emotion = "neutral"
        self._changed_at = -math.inf

    def observe(self, score: float, now: float) -> str | None:
        """Fold one score in; the new emotion when the mood changed, else None."""
        weight = self.alpha if abs(score) > 0.05 else self.alpha / 2
        self.value += weight * (max(-1.0, min(1.0, score)) - self.value)
        if now - self._changed_at < self.hold_s:
            return None
        target = self.emotion
        if self.value > self.enter:
            target = "happy"
        elif self.value < -self.enter:
            target = "sad"
        elif abs(self.value) < self.exit:
            target = "neutral"
        if target == self.emotion:
            return None
        self.emotion, self._changed_at = target, now
        return target
