"""The lab, part by part, as measured sections of a report.

Each module ``pN_*.py`` in this package is one part of the lab; its ``run(ctx)`` takes the shared
``LabContext`` and returns a ``Section``: the figures it drew, the tables it measured and the lab's
questions answered from those measurements. A part whose input is missing raises ``PartSkipped``
and the report says why and how to provide it. Finished parts are stored as JSON under ``OUT/parts/``,
so a rerun (or a run resumed after a kill) redoes only what is missing; training runs inside a part
resume from their own checkpoints.

A part module may set ``ESTIMATED_SECONDS = {"full": ..., "quick": ...}``: the progress display uses
it until this machine has stored how long the part really took.
"""
