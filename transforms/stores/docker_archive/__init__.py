"""``docker save`` tarballs (``docker-archive:PATH[:REPO:TAG]``): names, reader and writer.

An archive stores no registry manifest: ``manifest.json`` lists, per image, a config file
and layer files (normally uncompressed tars whose sha256 is the diff_id). The reader
synthesises a manifest per image; the writer stages blobs and builds the tar at publish.
"""
