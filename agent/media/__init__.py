"""Lesson media: capture, encode once, record and stream (docs/media.md).

Importing this package is cheap on purpose: the daemon imports ``agent.media.spec`` and must
never load NumPy, OpenCV or PyAudio; those live in the worker process only.
"""
