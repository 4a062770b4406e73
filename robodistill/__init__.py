"""robodistill: teachers in simulation, distilled into fast students, deployed as ONNX.

Layout (see ARCHITECTURE.md): ``robodistill.envs`` (simulators), ``robodistill.policies``
(torch modules), ``robodistill.deploy`` (ONNX runtime, torch-free), and this package's
orchestration modules: ``config``, ``cli``, ``store``, ``sampler``, ``rollout``, ``run``,
``stages``, ``pipeline``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("robodistill")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
