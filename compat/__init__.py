"""Shims that let third-party packages import in this environment (one module each):
``torchvision`` (PyPI's CUDA build on CPU torch) and ``dgl`` (DGL 2.1 beside a newer torch).
Nothing happens at import; each module exposes one function to call when needed."""
