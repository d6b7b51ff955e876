# One image for the Ray head, the Ray GPU workers and the `healthagent serve` driver.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
WORKDIR /app

# torch first, pinned: on GPU hosts the PyPI wheel carries CUDA.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY agents agents
COPY models models
COPY tools tools
COPY memory memory
COPY serving serving
COPY configs configs
RUN pip install .

EXPOSE 8000
CMD ["healthagent", "serve", "--config", "configs/cluster.yaml"]
