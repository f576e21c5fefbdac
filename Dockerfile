# Build stage: install the training group and build the default model repository.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md config.py settings.toml ./
COPY app app
COPY models models
COPY scheduler scheduler
RUN pip install --no-cache-dir ".[train]" && python -m models build

FROM python:3.11-slim AS runtime
WORKDIR /srv
COPY pyproject.toml README.md config.py settings.toml ./
COPY app app
COPY models models
COPY scheduler scheduler
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 recsys
COPY --from=build --chown=recsys /src/model_repository /srv/model_repository
USER recsys
EXPOSE 8000
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
