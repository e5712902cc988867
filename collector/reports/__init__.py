"""Monthly reports: the programme's evidence from what the collector stored (docs/reports.md).

Data flows one way: ``query`` reads the database into plain rows, ``figures`` turns rows into the
report's figures (pure, unit-testable), ``render_*`` writes them as JSON, CSV or HTML.
"""
