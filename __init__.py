"""asign: 3D spatial transcriptomics imputation from H&E stacks plus one ST section."""

__version__ = "0.1.0"
