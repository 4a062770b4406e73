"""Deploy: ONNX export and the torch-free runtime (arrives with the deploy issue).

Imported as ``robodistill.deploy``. The runtime part imports numpy and onnxruntime only,
so ``pip install robodistill[deploy]`` runs an exported policy on a robot without torch.
"""
