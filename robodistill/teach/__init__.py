"""The ``teach`` stage: RL teachers (``rl/``), the RL-100 diffusion teacher (``rl100/``)
and COMPASS embodiment specialists (``compass/``)."""
