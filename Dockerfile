# A Dataflow worker image with imagepush installed: faster start-up than --setup_file, and
# the place for what the workers need to reach registries (auth files, CA bundles,
# credential helpers), which never travel in the job.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/imagepush:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/imagepush:0.1.0
#   imagepush run configs/dataflow.yaml --sdk_container_image REGION-docker.pkg.dev/PROJECT/REPO/imagepush:0.1.0
#
# The base image's Beam and Python versions must match the launcher's (Beam 2.77, Python 3.11).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/imagepush
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
RUN pip install --no-cache-dir '.[dataflow]'

# Registry credentials for the workers, if they are not given by a credential helper:
# COPY auth.json /etc/imagepush/auth.json   (then registries.authfile: /etc/imagepush/auth.json)

ENTRYPOINT ["/opt/apache/beam/boot"]
