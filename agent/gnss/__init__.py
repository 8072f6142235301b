"""GNSS positioning: NMEA 0183 framing and parsing, per-cycle fix state, the reader thread, and the
location every event carries."""

from agent.gnss.fix import Fix, FixTracker
from agent.gnss.location import LocationProvider
from agent.gnss.nmea import FramerStats, NmeaFramer, Sentence, strip_comments
from agent.gnss.reader import GnssReader

__all__ = [
    "Fix",
    "FixTracker",
    "FramerStats",
    "GnssReader",
    "LocationProvider",
    "NmeaFramer",
    "Sentence",
    "strip_comments",
]
