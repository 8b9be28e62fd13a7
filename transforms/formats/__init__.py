"""Pure container-image format logic: bytes in, bytes out; no Beam and no I/O."""
