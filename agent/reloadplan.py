"""What a configuration reload must do, decided apart from doing it.

The daemon only applies a :class:`ReloadPlan`; which parts a change touches is decided here, from
the running and the new configuration alone, so every rule can be tested without starting an
agent (tests/test_reloadplan.py). A key is either applied by rebuilding the parts that read it, or
listed in ``needs_restart`` and kept at its running value: never "applied" in the log while the
old value goes on being used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.config import Config
from agent.telemetry.classes import retained_to_clear

#: Keys the running agent cannot change under itself: its identity on the broker and in the
#: records (device), where its files are (state_dir), and the listening sockets (status).
RESTART_KEYS = ("device", "state_dir", "status")


@dataclass(frozen=True)
class ReloadPlan:
    """The parts to rebuild, in the order the daemon applies them."""

    #: The configuration to run from now on: the new one, with ``needs_restart`` keys kept.
    config: Config
    needs_restart: tuple[str, ...] = ()
    #: Timetable, lesson defaults, media settings for the next lesson, the recording folder.
    lessons: bool = False
    #: The command guard (signature keys, rate limits).
    commands: bool = False
    #: The uploader, which follows the recordings' folder.
    uploader: bool = False
    #: The telemetry scheduler: stopped before the publisher is replaced, started after, so no
    #: record of a class just turned off follows the clearing of its retained message.
    scheduler: bool = False
    #: The broker connection (or which retained messages it clears).
    publisher: bool = False

    @property
    def changed(self) -> bool:
        return any((self.lessons, self.commands, self.uploader, self.scheduler, self.publisher,
                    self.needs_restart))


def plan_reload(old: Config, new: Config, timetable_file_changed: bool = False) -> ReloadPlan:
    """The plan that takes a running agent from ``old`` to ``new``. ``timetable_file_changed``:
    the timetable file's content differs from the one loaded (an edited timetable is reloaded
    even when the configuration is the same)."""
    needs_restart = tuple(k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k))
    if needs_restart:
        new = replace(new, **{k: getattr(old, k) for k in needs_restart})
    return ReloadPlan(
        config=new,
        needs_restart=needs_restart,
        lessons=(new.lessons != old.lessons or new.media != old.media
                 or timetable_file_changed),
        commands=new.commands != old.commands,
        uploader=new.upload != old.upload or new.recording_path != old.recording_path,
        scheduler=new.telemetry != old.telemetry or new.mqtt != old.mqtt,
        publisher=(new.mqtt != old.mqtt or retained_to_clear(new.telemetry.classes)
                   != retained_to_clear(old.telemetry.classes)),
    )
