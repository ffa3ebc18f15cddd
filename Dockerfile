# The image for Kubernetes (k8s/) or any container cluster: Ray's GPU image (the Ray of pyproject.toml; change
# both together) with this project installed as a package, as `pip install .` installs it.
# Build: docker build -t <registry>/medpeft-sweep:latest .
FROM rayproject/ray:2.60.0-py311-gpu
COPY --chown=ray:users . /home/ray/medpeft-sweep
RUN python -m pip install --quiet --no-cache-dir /home/ray/medpeft-sweep
WORKDIR /home/ray/medpeft-sweep
