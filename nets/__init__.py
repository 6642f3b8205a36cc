"""Network definitions behind the encoder registry (``asign.encoders``): one module each."""
