"""Image stores: one module per transport behind the interfaces of ``base``."""
