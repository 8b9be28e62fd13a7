"""Beam transforms, image formats and stores for imagepush.

Dependencies point one way: ``transforms.formats`` is pure (no Beam, no I/O),
``transforms.stores`` hides transports behind small source/destination
interfaces, and the Beam DoFns in this package wire the two together.
"""
