"""``classroom-agent doctor``: one command that answers "why is this terminal not working?".

Each check returns :class:`~agent.doctor.report.Finding` values: pass, warn, fail or skip, and
for warn and fail a code of the one warning catalogue (agent/status/warnings.py), so that the
cause and the fix read the same as in ``status`` and on the page, in either language.

- :mod:`agent.doctor.report`: findings, their rendering for people and for ``--json``, the exit
  code (0 all passed, 1 warnings, 2 a failure);
- :mod:`agent.doctor.runner`: runs the checks side by side, each within its own time limit, and
  prints each result as soon as it and those before it are in (the progress);
- :mod:`agent.doctor.local`: configuration, state directory and free space, secret files,
  FFmpeg, the systemd service, the running agent;
- :mod:`agent.doctor.network`: the broker (name, port, TLS and its certificate, login), the
  live sinks, and the clock against an NTP server (:mod:`agent.doctor.sntp`);
- :mod:`agent.doctor.devices`: the camera and the microphone, through the probe child process
  (agent/media/peek.py), or the running lesson's own figures while a lesson holds them.

It needs no running agent (it reads the config); when the agent runs, its status is used too.
"""
