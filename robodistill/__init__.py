"""robodistill: teachers in simulation, distilled into fast students, deployed as ONNX.

Layout (see ARCHITECTURE.md): ``robodistill.envs`` (simulators), ``robodistill.policies``
(torch modules), ``robodistill.deploy`` (ONNX runtime, torch-free), and the orchestration,
in layers that follow the data flow (lowest first; tests/test_layers.py enforces them):

- ``config`` (one module per section) and ``errors``;
- ``core`` (run directories, seeds, rollouts, Ray workers) and ``data`` (episodes, the
  trajectory store, the sampler, demonstrations);
- ``training`` (the one gradient-step loop, checkpoints, best-policy selection, optimizers);
- the stages: ``collect``, ``teach`` (RL, RL-100, COMPASS), ``distill`` (students),
  ``evaluate``, ``export``, ``control``;
- ``stages`` (the registry), ``report``, ``pipeline`` and ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robodistill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
