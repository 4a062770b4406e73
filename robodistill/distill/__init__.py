"""The ``distill`` stage: students of a teacher (DAgger, consistency, streaming, RTI) and
the COMPASS generalist."""
