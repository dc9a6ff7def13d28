"""Bluesky plans on ophyd devices inside labpipe experiments.

``EnvExperiment.run_plan(plan, **metadata)`` runs a bluesky plan with a RunEngine made
for the labpipe run (``get_run_engine()`` gives it, e.g. to install suspenders). The
modules, one idea each:

- ``engine``: the RunEngine of a run (no signal handlers; start documents carry ``rid``,
  ``pipeline``, ``expid``, ``repo_rev``);
- ``pausing``: at checkpoints the plan yields to the scheduler (``check_pause``), and
  termination aborts it cleanly at the next checkpoint;
- ``live``: every event's data streamed into broadcast datasets
  ``bluesky.<stream>.<field>``;
- ``table``: a LiveTable-style log line per event;
- ``archive``: all documents and event data in the results file under ``bluesky/``;
- ``session``: the above put together, once per run;
- ``plans``: plan functions as experiments (``@plan_experiment``, ``__plans__``), and
  queueserver-style items (``name``, ``args``, ``kwargs``) mapped onto their arguments.

``labpipe.language`` never imports this package: once a plan runs, ``run_plan`` asks the
run's dataset manager (``labpipe.worker.datasets``) for its session (``session``).
"""
