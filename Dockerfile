# The OneEncoder image: Ray 2.60 on Python 3.11 with this project and all its extras (embed, train, serve, evaluate).
#   docker build -t oneencoder:cpu .
#   docker build -t oneencoder:gpu --build-arg BASE=rayproject/ray:2.60.0-py311-gpu \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# cluster.yaml's docker images and the KubeRay manifests in deploy/kubernetes/ run it (docs/deployment.md).
ARG BASE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE}

# torch's CPU build on the CPU image (the default index's wheel carries CUDA libraries it would never use)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /home/ray/oneencoder
# the dependencies first, from the project's metadata alone: this layer is kept while only the code changes
COPY --chown=ray:users pyproject.toml constraints.txt README.md ./
RUN mkdir -p pipeline jobs serving \
    && touch pipeline/__init__.py jobs/__init__.py serving/__init__.py \
    && pip install --extra-index-url "${TORCH_INDEX}" -c constraints.txt ".[all]" \
    && pip uninstall -y oneencoder-ray \
    && rm -rf pipeline jobs serving build ./*.egg-info
# then the code (the package, its job configs and the Serve config; benchmarks and tests stay out: .dockerignore)
COPY --chown=ray:users pipeline/ pipeline/
COPY --chown=ray:users jobs/ jobs/
COPY --chown=ray:users serving/ serving/
RUN pip install --no-deps -e . \
    && oneencoder --help > /dev/null \
    && python -c "from pipeline.media.ffmpeg import find_ffmpeg; find_ffmpeg()"

# the Serve config's import path (serving.app:build_app) and the jobs' modules resolve from here
ENV PYTHONPATH=/home/ray/oneencoder
