"""The WHIP offer mending (agent/media/whipsdp.py), on the offer FFmpeg 9.0.2 really sends."""

from __future__ import annotations

from agent.media.whipsdp import declare_group_ssrcs

FFMPEG_OFFER = "\r\n".join([
    "v=0", "o=FFmpeg 4489045141692799359 2 IN IP4 127.0.0.1", "s=FFmpegPublishSession", "t=0 0",
    "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", "a=sendonly", "a=rtpmap:111 opus/48000/2",
    "a=ssrc:631341305 cname:FFmpeg", "a=ssrc:631341305 msid:FFmpeg audio",
    "m=video 9 UDP/TLS/RTP/SAVPF 106 105", "a=mid:1", "a=sendonly",
    "a=rtpmap:106 H264/90000", "a=rtcp-fb:106 nack", "a=rtpmap:105 rtx/90000",
    "a=fmtp:105 apt=106", "a=ssrc-group:FID 631341306 631341307",
    "a=ssrc:631341306 cname:FFmpeg", "a=ssrc:631341306 msid:FFmpeg video", ""]).encode()


def test_the_rtx_ssrc_gets_the_lines_of_its_video_ssrc() -> None:
    out = declare_group_ssrcs(FFMPEG_OFFER).decode()
    lines = out.split("\r\n")
    video = lines[lines.index("m=video 9 UDP/TLS/RTP/SAVPF 106 105"):]
    assert video[-5:] == ["a=ssrc:631341306 cname:FFmpeg", "a=ssrc:631341306 msid:FFmpeg video",
                          "a=ssrc:631341307 cname:FFmpeg", "a=ssrc:631341307 msid:FFmpeg video",
                          ""]
    # Nothing else moved: the original lines in order, the audio section untouched.
    assert [x for x in lines if not x.startswith("a=ssrc:631341307")] == \
        FFMPEG_OFFER.decode().split("\r\n")
    assert out.count("631341307") == 3


def test_an_offer_that_declares_its_ssrcs_or_is_not_text_is_left_alone() -> None:
    mended = declare_group_ssrcs(FFMPEG_OFFER)
    assert declare_group_ssrcs(mended) is mended
    for other in (b"v=0\r\nm=video 9 RTP/AVP 96\r\n", b"\xff\xfe not utf-8", b""):
        assert declare_group_ssrcs(other) is other
