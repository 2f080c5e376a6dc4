# castore in a container: `castore serve`, `castore import` and `castore mount`.
#
#   docker build -t castore-fuse .
#   docker run -d -p 8000:8000 -v castore-data:/data castore-fuse          # the server
#
# See docker-compose.yml and the README's "Docker" section for the mount's flags.

# --- build: compile pyfuse3 and install the package into a venv --------------------------------
FROM debian:bookworm-slim AS build

# ca-certificates: pip reaches PyPI over HTTPS, and Debian's pip trusts the system's bundle.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates gcc libc6-dev libfuse3-dev pkg-config python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/castore
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# The dependencies first, read from pyproject.toml, so that a change to the code alone reuses
# this layer instead of downloading and compiling them again.
COPY pyproject.toml ./
RUN /opt/castore/bin/python -c 'import tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(project["dependencies"] + project["optional-dependencies"]["fuse"]))' \
        >requirements.txt \
    && /opt/castore/bin/pip install -r requirements.txt

COPY README.md setup.py ./
COPY castore_client castore_client
COPY castore_fuse castore_fuse
# pip and setuptools are only needed here: the image runs the venv, never installs into it.
RUN /opt/castore/bin/pip install --no-deps . \
    && /opt/castore/bin/pip uninstall -y -q pip setuptools \
    && /opt/castore/bin/castore --help >/dev/null

# --- the image: Python, fuse3 and the venv, no compilers -----------------------------------------
FROM debian:bookworm-slim

# fuse3 brings libfuse3 and fusermount3, which the mount's auto_unmount needs even as root.
# user_allow_other lets a non-root mount use --allow-other; a root mount needs no permission.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 python3 \
    && rm -rf /var/lib/apt/lists/* \
    && echo user_allow_other >>/etc/fuse.conf

# serve and import run as this unprivileged user. The mount runs as root instead (compose's
# `user: root`, `docker run --user root`): mounting needs CAP_SYS_ADMIN, and a container grants
# the capabilities of --cap-add to root only.
RUN useradd --system --user-group --create-home --shell /usr/sbin/nologin castore \
    && mkdir -p /data /mnt/castore \
    && chown castore:castore /data

COPY --from=build /opt/castore /opt/castore
ENV PATH=/opt/castore/bin:$PATH PYTHONUNBUFFERED=1

USER castore
EXPOSE 8000
ENTRYPOINT ["castore"]
# The store lives in /data: mount a volume there (a fresh named volume takes /data's owner).
CMD ["serve", "--listen", "grpc+http://0.0.0.0:8000", "--store", "file:///data/store"]
