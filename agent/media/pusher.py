"""One RTMP(S) push in a process of its own, with no stream key on its command line.

``python -m agent.media.pusher --config-fd N`` reads one JSON object from descriptor ``N`` (a pipe
the sink passes with ``pass_fds``): the URL with its stream key. So the key exists only in this
process's memory: never in an argv, an environment or a file that another local user could read
(``/proc/PID/cmdline`` is world readable; issue 9). FFmpeg's command line cannot do that any more:
FFmpeg 9's ``-/option FILE`` covers only its own options (not protocol or muxer options) and its
``-fpre`` no longer applies them (both measured, docs/media.md). So the push runs on FFmpeg's
libraries through PyAV.

The stream comes in on stdin as FLV (H.264 + AAC from the encoder's tee, cut at tag boundaries by
the sink) and is copied. Progress goes to stderr as ``total_size=N`` lines, the same form as
FFmpeg's ``-progress`` (agent/media/sinks.py reads it); anything else on stderr is a message.
Exit 0 at the end of the input, 1 on failure (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

IO_TIMEOUT_S = 5.0
PROGRESS_S = 0.5
MAX_CONFIG_BYTES = 64 * 1024


def read_config(fd: int) -> dict[str, Any]:
    chunks = []
    with os.fdopen(fd, "rb") as f:
        while data := f.read(4096):
            chunks.append(data)
            if sum(map(len, chunks)) > MAX_CONFIG_BYTES:
                raise ValueError("config larger than 64 KiB")
    cfg = json.loads(b"".join(chunks))
    if not isinstance(cfg, dict) or cfg.get("protocol") != "rtmp" \
            or not isinstance(cfg.get("url"), str):
        raise ValueError("config needs url and protocol (rtmp)")
    return cfg


def _output(av: Any, cfg: dict[str, Any]) -> Any:
    # PyAV's timeout (an interrupt callback) bounds every network call: a silent stall must
    # not hang the push; the sink restarts it.
    return av.open(cfg["url"], "w", format="flv", timeout=IO_TIMEOUT_S,
                   options={"flvflags": "no_duration_filesize", "flush_packets": "1"})


def push(cfg: dict[str, Any]) -> int:
    import av

    av.logging.set_level(av.logging.ERROR)
    inp = av.open("pipe:0", format="flv",
                  options={"analyzeduration": "200000", "probesize": "32768"})
    v_in = inp.streams.video[0] if inp.streams.video else None
    a_in = inp.streams.audio[0] if inp.streams.audio else None
    out = _output(av, cfg)
    streams = {s.index: out.add_stream_from_template(s) for s in (v_in, a_in) if s is not None}
    sent, last = 0, 0.0
    try:
        for packet in inp.demux():
            ostream = streams.get(packet.stream.index)
            if packet.dts is None or ostream is None:  # the demuxer's flush packet
                continue
            packet.stream = ostream
            sent += packet.size
            out.mux(packet)
            now = time.monotonic()
            if now - last >= PROGRESS_S:
                last = now
                print(f"total_size={sent}", file=sys.stderr, flush=True)
    finally:
        print(f"total_size={sent}", file=sys.stderr, flush=True)
        out.close()
        inp.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agent.media.pusher")
    ap.add_argument("--config-fd", type=int, required=True)
    args = ap.parse_args(argv)
    try:
        cfg = read_config(args.config_fd)
    except (OSError, ValueError) as exc:
        print(f"pusher: unusable config: {exc}", file=sys.stderr)
        return 2
    try:
        return push(cfg)
    except Exception as exc:  # the sink restarts us with back-off and reports the cause
        print(f"pusher: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
