"""Token buckets, and the one rate limiter for log lines a peer can cause.

Pure: time comes in as an argument (or from an injected clock), so the
limits are tested without waiting.

A peer decides how often it sends; it must not decide how much work, memory
or log it costs us. Each limit here is a token bucket: `rate` tokens a
second, at most `burst` saved up. A Buckets keeps one bucket per key (a
minion id, a transport key, a connection) and forgets the least recently
used beyond `max_keys`, so a peer that invents keys cannot grow the table.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Hashable


class Bucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are that many; False (nothing spent) if not."""
        # max(): a clock that steps back must not take tokens away.
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class Buckets:
    """One Bucket per key, for at most `max_keys` keys (least recently used go first).

    A forgotten key starts again with a full bucket, so max_keys must exceed
    the number of keys that are active at once, or the limit leaks.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: collections.OrderedDict[Hashable, Bucket] = collections.OrderedDict()

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)


# Log lines a daemon writes about what peers did, per second at most, and how
# many it may write at once after a quiet spell. At this rate a flood costs at
# most about 20 KiB of log a second, and a line a second says how many more
# were left out.
PEER_LOG_RATE = 10.0
PEER_LOG_BURST = 50.0
# Lines about security events (PeerLog.security), per second and burst: a
# budget of their own, so that a flood of junk, which empties the one above,
# cannot hide them; a flood of these costs at most this much more.
SECURITY_LOG_RATE = 2.0
SECURITY_LOG_BURST = 20.0


class PeerLog:
    """Every log line that a peer can cause goes through one instance of this.

    Lines beyond the budget are counted, not written; the next line written
    after a suppression says how many were left out, and so does a line from
    flush() (called from a timer), so a flood that stops is still accounted for.
    Security events (security()) have a budget of their own.
    """

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float],
        rate: float = PEER_LOG_RATE,
        burst: float = PEER_LOG_BURST,
        security_rate: float = SECURITY_LOG_RATE,
        security_burst: float = SECURITY_LOG_BURST,
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.bucket = Bucket(rate, burst, clock())
        self.security_bucket = Bucket(security_rate, security_burst, clock())
        self.suppressed = 0
        self.security_suppressed = 0

    def log(self, level: int, message: str, *args: object, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        if not self.bucket.take(self.clock()):
            self.suppressed += 1
            return
        self.flush()
        self.logger.log(level, message, *args, exc_info=exc_info)

    def security(self, message: str, *args: object) -> None:
        """A warning about a security event (a key presenting an id another
        key holds), from the security budget."""
        if not self.logger.isEnabledFor(logging.WARNING):
            return
        if not self.security_bucket.take(self.clock()):
            self.security_suppressed += 1
            return
        self.flush()
        self.logger.warning(message, *args)

    def info(self, message: str, *args: object) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: object) -> None:
        self.log(logging.ERROR, message, *args)

    def flush(self) -> None:
        """Say how many lines were left out since the last line, if any."""
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            self.logger.warning("%d more log lines about peers left out (rate limit)", count)
        if self.security_suppressed:
            count, self.security_suppressed = self.security_suppressed, 0
            self.logger.warning(
                "%d more log lines about security events left out (rate limit)", count
            )
