"""What a technician sees: one status snapshot, served locally and rendered for people.

One concern per module, data flowing one way (board -> warnings -> renderers -> endpoints):

- :mod:`agent.status.board`: the daemon's :class:`~agent.status.board.StatusBoard`, which builds
  the snapshot (plain JSON-able data) from the parts it is given.
- :mod:`agent.status.warnings`: the one catalogue of what a technician should act on. Each
  warning has a stable code, a subsystem, a severity, its parameters, and an English cause and
  next step written as templates (the gettext msgids of a later translation). The CLI, the page,
  ``doctor`` and the JSON all take their words from here.
- :mod:`agent.status.text`: the snapshot for people in a terminal (``classroom-agent status``);
  everything that came from outside is printed inertly.
- :mod:`agent.status.prometheus`: the snapshot as Prometheus text.
- :mod:`agent.status.http`: the local HTTP plumbing (request, response, routes, the server);
  it knows nothing of the board. :mod:`agent.status.endpoints` puts the board on routes.

Nothing here imports the daemon, the CLI or local control (:mod:`agent.control` adds its own
routes); the CLI imports only :mod:`~agent.status.text`, which stays light.
"""
