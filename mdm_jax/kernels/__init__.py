"""Native CPU kernels called from XLA through its FFI (oneDNN convolutions, ``onednn``)."""
