# The worker image used by docker-compose.yml: the project with its training extra.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY schemas ./schemas
COPY ops ./ops
COPY pipelines ./pipelines
RUN pip install --no-cache-dir -e ".[train]"

ENV STREAM_HOME=/app/.stream \
    STREAM_REGISTRY=/registry \
    STREAM_WEB_HOST=0.0.0.0
EXPOSE 6066
CMD ["stream", "worker", "--pipeline", "pipelines/payments.yaml"]
