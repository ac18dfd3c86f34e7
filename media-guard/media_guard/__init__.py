"""Probe and decode audio nobody vouches for, the same way in the worker and the analysis server.

Every upload is hostile media until proven otherwise. ffmpeg, left to itself, guesses the format
of its input, and several of its demuxers (concat scripts, HLS playlists) open *other* files
named inside it; a 137-byte upload could make the worker analyse another user's recording.
And a header can lie: a 23 KB FLAC may declare one second and hold ten minutes of 8 channels.
So nothing here trusts the bytes:

* the format is the one sniffed from the magic bytes (`formats`), and it is forced on ffprobe
  and ffmpeg (`-f`), with `file` as the only protocol and ffprobe's answer checked against an
  allow-list of container and codec names before any decode (`probe`);
* decoding is bounded before it starts (`decode`): channel and sample-rate ceilings applied by
  ffmpeg itself, a duration cap (`-t`), an output-size cap that also catches a stream longer
  than its header declares, a wall-clock timeout, and an address-space limit on every ffmpeg
  child (`tools`);
* error messages name the input as `<input>`, never by a host path.

The package has no dependency but ffmpeg/ffprobe on PATH, so both processes install it as is.
"""

from media_guard.decode import DecodeLimits, Pcm, decode_pcm, length_cap_seconds
from media_guard.errors import MediaError
from media_guard.formats import CONTENT_TYPES, FormatRule, rule_for, sniff_audio_format, sniff_file
from media_guard.probe import Probe, probe
from media_guard.tools import ToolLimits, input_args, run_tool, spawn_tool

__all__ = [
    "CONTENT_TYPES",
    "DecodeLimits",
    "FormatRule",
    "MediaError",
    "Pcm",
    "Probe",
    "ToolLimits",
    "decode_pcm",
    "input_args",
    "length_cap_seconds",
    "probe",
    "rule_for",
    "run_tool",
    "sniff_audio_format",
    "sniff_file",
    "spawn_tool",
]
