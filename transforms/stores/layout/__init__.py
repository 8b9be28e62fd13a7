"""OCI image layouts: a directory (``oci:``) and the same layout in one tar (``oci-archive:``)."""
